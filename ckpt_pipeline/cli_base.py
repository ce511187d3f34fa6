"""What every command module of ``ckpt-pipeline`` shares: settings, Redis, errors, output."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producer.events import spell_non_finite
from producer.redaction import terminal_safe
from scorer_worker.errors import PipelineError
from scorer_worker.settings import Settings


def _settings() -> Settings:
    return Settings.from_env()


def _redis(settings: Settings, *, ride_out_outages: bool = False) -> Any:
    from scorer_worker.connection import connect

    return connect(settings, ride_out_outages=ride_out_outages)


def _data(settings: Settings, queue: Any, *, ride_out_outages: bool = False) -> Any:
    """The data side (``CKPT_DATA_REDIS_URL``): ``queue`` itself when it is unset."""
    from scorer_worker.connection import connect_data

    return connect_data(settings, queue, ride_out_outages=ride_out_outages)


def _json_default(value: Any) -> Any:
    return str(value)


def _dump(data: Any) -> str:
    return json.dumps(_finite(data), indent=2, default=_json_default)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return spell_non_finite(value) if isinstance(value, float) else value


class _Group(click.Group):
    """Turns the project's own errors into one clear line and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # click's own: --help and usage errors (Exit is a RuntimeError)
        except (PipelineError, ValueError, OSError, RuntimeError) as exc:
            _fail(str(exc))
        except RedisConnectionError as exc:  # no traceback for the commonest operator error
            _fail(f"Redis is unreachable ({exc}); check REDIS_URL")
        except RedisTimeoutError as exc:
            _fail(f"Redis did not answer in time ({exc}); check REDIS_URL")
        except OutOfMemoryError:
            _fail(
                "Redis is out of memory (used memory > maxmemory) and refused the write;"
                " free memory or raise maxmemory, then try again"
            )
        except RedisError as exc:
            _fail(f"Redis refused the command: {_redis_reason(exc)}")


def _fail(message: str) -> None:
    """Print ``error: MESSAGE`` as one inert line (the message may quote a path or an id
    holding newlines or escape sequences) and exit with status 2."""
    line = terminal_safe(message, keep_newlines=False)
    click.echo("error: " + line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"), err=True)
    sys.exit(2)


# redis-py names the failed command of a pipeline in its message, arguments (tokens) included.
_PIPELINE_COMMAND = re.compile(r"Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def _redis_reason(exc: RedisError) -> str:
    text = _PIPELINE_COMMAND.sub("", str(exc))
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def create_pod_credentials(settings: Settings, redis: Any, job_id: str) -> Any:
    """Create (or rotate) the pod user of ``job_id`` on every node of the data side ``redis``.

    Recorded first, so that the pump's reconciliation completes it rather than deleting it.
    If a master does not take it, nothing is left: the error names the master.
    """
    from remote.credentials import new_pod_credentials
    from scorer_worker.acl import install_pod_user
    from scorer_worker.registry import drop_pod_user, record_pod_user

    credentials = new_pod_credentials(job_id, settings.pod_url)
    record_pod_user(redis, job_id, credentials.username, credentials.password)
    try:
        install_pod_user(redis, job_id, credentials.password, _pod_user_policy())
    except Exception:
        try:  # no pod holds these credentials: no node should either
            drop_pod_user(redis, job_id)
        except Exception as exc:  # the reconciliation deletes what is left
            logging.getLogger(__name__).warning("pod user of %s not dropped: %s", job_id, exc)
        raise
    return credentials


def _pod_user_policy() -> Any:
    """The pod users' names and ACL rules (``remote.credentials``), for ``scorer_worker.acl``."""
    from remote.credentials import job_of_pod_username, pod_acl_rules, pod_username
    from scorer_worker.acl import PodUserPolicy

    return PodUserPolicy(pod_username, job_of_pod_username, pod_acl_rules)


def _pod_lifecycle(redis: Any, *, background: bool) -> Any:
    # The pump applies each RunPod job's on_end once its end is written, and ends a job whose
    # pod died (remote.lifecycle); the scorer itself does not import remote.
    from remote.lifecycle import LifecycleConfig, PodLifecycle

    return PodLifecycle(redis, LifecycleConfig.from_env(), background=background)
