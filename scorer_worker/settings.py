"""One settings object for every process, read from the environment only when asked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from .errors import ConfigError


def _default_sink() -> str:
    return "sqlite:///" + os.path.abspath("checkpoint-pipeline.db")


@dataclass(frozen=True)
class Settings:
    """Configuration of the pump, the workers and the CLI.

    Environment variables: ``REDIS_URL``, ``CKPT_SINK`` (``sqlite:///abs/path.db``,
    ``supabase``, ``postgresql://...``), ``SUPABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``,
    ``CKPT_PROFILE``, ``CKPT_POD_REDIS_URL`` (Redis as pods reach it; defaults to
    ``REDIS_URL``), and ``CKPT_<FIELD>`` for the numeric fields below.
    """

    # URLs may carry passwords and the key is a secret: none of them appear in repr().
    redis_url: str = field(default="redis://localhost:6379/0", repr=False)
    sink_url: str = field(default="", repr=False)
    supabase_url: str = ""
    supabase_key: str = field(default="", repr=False)
    pod_redis_url: str = field(default="", repr=False)
    profile: str = "default"
    drain_batch_events: int = 1000
    # A task's time budget: a job still busy after it gets a task of its own, so one busy
    # job (a flooding pod, a delivered spool) holds the jobs batched with it for at most this.
    drain_budget_s: float = 1.0
    dispatch_batch_jobs: int = 500
    pump_interval_ms: int = 20
    discover_interval_s: float = 5.0
    queued_marker_ttl_s: int = 30
    flush_lock_ttl_s: int = 30
    flush_min_interval_s: float = 1.0
    task_timeout_s: int = 120
    dead_payload_max_bytes: int = 4096
    dead_letters_per_job: int = 10_000  # each job's dead letters are capped at this many
    # A drain reads a stream holding more than this through a bounded script (see
    # store.read_events), so no drain loads much more, whatever a pod appended.
    drain_read_max_bytes: int = 16 * 1024 * 1024
    # Per-job limits on what a pod publishes (scorer_worker/limits.py). A real run is far
    # below: a Trainer logs a few events a second, and a spool delivered after an outage is a
    # burst the bucket absorbs.
    job_max_undrained_events: int = 100_000
    job_max_undrained_bytes: int = 256 * 1024 * 1024
    job_max_state_bytes: int = 64 * 1024 * 1024  # a 100,000-step run keeps about 20 MB
    job_max_events_per_s: float = 1000.0  # sustained, refilling a bucket of job_burst_events
    job_burst_events: int = 50_000
    limits_interval_s: float = 1.0
    stall_after_s: float = 1800.0  # a running job silent this long is reported stalled
    poison_max_attempts: int = 3
    sink_retry_attempts: int = 5
    sink_retry_max_s: float = 10.0
    # How long long-running processes (RQ workers with RetryingRedis, the pump) wait through a
    # Redis outage before a Redis error surfaces.
    redis_retry_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``).

        Raises:
            ConfigError: when a numeric variable does not parse.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "redis_url": env.get("REDIS_URL") or "redis://localhost:6379/0",
            "sink_url": env.get("CKPT_SINK") or _default_sink(),
            "supabase_url": env.get("SUPABASE_URL", ""),
            "supabase_key": env.get("SUPABASE_SERVICE_ROLE_KEY", ""),
            "profile": env.get("CKPT_PROFILE", cls.profile),
            "pod_redis_url": env.get("CKPT_POD_REDIS_URL", ""),
        }
        for spec in fields(cls):
            name = f"CKPT_{spec.name.upper()}"
            if spec.type in ("int", "float") and name in env:
                values[spec.name] = _parse_number(
                    name, env[name], int if spec.type == "int" else float
                )
        return cls(**values)


def _parse_number(name: str, text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a valid {kind.__name__}") from None
