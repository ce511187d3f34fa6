"""The pod's life on the trusted side: ``on_end`` when the job ends, and a pod that dies early.

:class:`PodLifecycle` is a hook the pump calls after each pass (the command line composes the
two; the scorer does not import ``remote``). For each job of ``ckpt:pods`` it owns:

- once the job's ``train_end`` is scored and its row written, it applies the spec's
  ``on_end`` with ``POST {api}/pods/{id}/action``: ``stop`` (default: GPU billing ends, the
  volume keeps the checkpoints), ``terminate``, or ``keep`` (nothing). A failure is retried
  with a doubling backoff, kept in the meta hash (attempts, next attempt, last error), until
  RunPod accepts; then the job leaves ``ckpt:pods``.
- while the job runs it reads the pod (``GET {api}/pods/{id}``) every ``CKPT_RUNPOD_POLL_S``.
  If RunPod reports it ``EXITED``, ``ERROR`` or gone while the job has not ended, it ends the
  job: it publishes a ``train_end`` with status ``failed`` and the reason to the job's stream
  (trusted credentials), so the scorer and the sink write the row as for any other end.

RunPod calls happen on a background thread in a long-running pump, so a slow RunPod never
delays the pump's own work.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from redis.exceptions import WatchError

from producer.events import build_event, encode_event
from producer.wire import END_STATUSES, EVENT_FIELD, TRAIN_END, as_text, stream_key

from . import pod_record as rec
from .pod_record import PodView, read_view
from .runpod import (
    API_KEY_ENV,
    API_URL_ENV,
    DEFAULT_API_URL,
    NO_RETRY,
    RetryPolicy,
    RunPodClient,
    RunPodError,
)

log = logging.getLogger(__name__)

DEAD_STATUSES = ("EXITED", "ERROR", "TERMINATED")
"""RunPod ``PodStatus`` values in which the container no longer trains."""

GONE = "TERMINATED"
"""What a pod RunPod no longer knows (404) counts as."""

SATISFIED_BY = {"stop": ("EXITED", "TERMINATED"), "terminate": ("TERMINATED",)}
"""Statuses in which an action has nothing left to do (RunPod answers 409 to it there)."""

DONE_RESULT = {"stop": "stopped", "terminate": "terminated"}

SCAN_INTERVAL_S = 1.0
"""Least time between two background scans of ``ckpt:pods`` (the pump passes every 20 ms)."""


class LifecycleError(RuntimeError):
    """The trusted side cannot talk to RunPod (e.g. no API key in its environment)."""


class LifecycleConfig(BaseSettings):
    """Settings of the trusted side's pod handling.

    Environment: ``RUNPOD_API_KEY``, ``RUNPOD_API_URL`` (for pods recorded without one),
    ``CKPT_RUNPOD_POLL_S``, ``CKPT_RUNPOD_RETRY_FIRST_S``, ``CKPT_RUNPOD_RETRY_MAX_S``; each
    field's variable is its ``validation_alias``. As with the scorer's ``Settings`` (which
    ``remote`` does not import), ``LifecycleConfig(...)`` never reads the environment; only
    :meth:`from_env` does.

    Attributes:
        api_key: RunPod's API key (never shown).
        api_url: the API base for pods whose record names none.
        poll_s: seconds between two reads of a running job's pod.
        retry_first_s: the first wait after a failed ``on_end`` action; it doubles.
        retry_max_s: the longest wait between two ``on_end`` attempts.
        timeout_s: the timeout of one RunPod call.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        extra="forbid",
        populate_by_name=True,
    )

    api_key: str = Field("", validation_alias=API_KEY_ENV, repr=False)
    api_url: str = Field(DEFAULT_API_URL, validation_alias=API_URL_ENV)
    poll_s: float = Field(30.0, validation_alias="CKPT_RUNPOD_POLL_S")
    retry_first_s: float = Field(2.0, validation_alias="CKPT_RUNPOD_RETRY_FIRST_S")
    retry_max_s: float = Field(300.0, validation_alias="CKPT_RUNPOD_RETRY_MAX_S")
    timeout_s: float = 15.0

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given to the constructor (see the class docstring)."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LifecycleConfig:
        """Read the settings from ``env`` (default ``os.environ``).

        An unset or empty variable keeps the field's default.

        Raises:
            ValueError: when a numeric variable does not parse, naming it and its value.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {
            field.validation_alias: env[field.validation_alias]
            for field in cls.model_fields.values()
            if isinstance(field.validation_alias, str) and env.get(field.validation_alias)
        }
        try:
            return cls(**values)
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            variable = str(error["loc"][0]) if error["loc"] else "?"
            raise ValueError(
                f"{variable}={error.get('input')!r} is not a number: {error['msg']}"
            ) from None

    def backoff_s(self, attempts: int) -> float:
        """Return the wait after ``attempts`` failed attempts."""
        return min(self.retry_max_s, self.retry_first_s * 2 ** max(0, attempts - 1))


class PodLifecycle:
    """The pump's hook: applies ``on_end`` and ends jobs whose pod died (module docstring).

    Args:
        redis: a client with trusted credentials.
        config: the settings.
        background: run the RunPod calls on a thread (a long-running pump); False runs them
            in the call (``pump --burst``, tests).
        clock: the wall clock (tests move it).
        client_for: builds the RunPod client of an API base (tests pass their own).
        retry: the in-call retries of each RunPod call. None by default: the pump retries
            at its next scans, with the backoff kept in the meta hash.
    """

    def __init__(
        self,
        redis: Any,
        config: LifecycleConfig,
        *,
        background: bool = False,
        clock: Callable[[], float] = time.time,
        client_for: Callable[[str], RunPodClient] | None = None,
        retry: RetryPolicy = NO_RETRY,
    ) -> None:
        self.redis = redis
        self.config = config
        self.retry = retry
        self.background = background
        self.clock = clock
        self._client_for = client_for or self._new_client
        self._clients: dict[str, RunPodClient] = {}
        self._thread: threading.Thread | None = None
        self._last_scan = float("-inf")

    def __call__(self, owns: Callable[[str], bool] = lambda job_id: True) -> None:
        """Run (or, in the background, start) one scan of the jobs ``owns`` accepts."""
        if not self.background:
            self.scan(owns)
            return
        if self._thread is not None and self._thread.is_alive():
            return
        if time.monotonic() - self._last_scan < SCAN_INTERVAL_S:
            return
        self._last_scan = time.monotonic()
        self._thread = threading.Thread(
            target=self.scan, args=(owns,), name="runpod-lifecycle", daemon=True
        )
        self._thread.start()

    def scan(self, owns: Callable[[str], bool] = lambda job_id: True) -> dict[str, str]:
        """Reconcile every managed job that ``owns`` accepts.

        Returns:
            What was done, by job (jobs with nothing to do are left out).
        """
        done = {}
        for job_id in sorted(as_text(m) for m in self.redis.smembers(rec.PODS_KEY)):
            if not owns(job_id):
                continue
            try:
                outcome = self.reconcile(job_id)
            except Exception:  # one job's trouble must not stop the others, nor the pump
                log.exception("pod lifecycle of %s failed; retrying next scan", job_id)
                continue
            if outcome:
                done[job_id] = outcome
        return done

    def reconcile(self, job_id: str) -> str | None:
        """Do what ``job_id``'s pod needs now; return what was done, if anything."""
        view = read_view(self.redis, job_id)
        now = self.clock()
        if view.pod_id is None:
            self.redis.srem(rec.PODS_KEY, job_id)
            return "forgotten: no pod recorded"
        if view.job_ended:
            if view.on_end_done:
                self.redis.srem(rec.PODS_KEY, job_id)
                return None
            if now < view.number(rec.ON_END_NEXT_AT):
                return None
            return self.apply_on_end(view, view.on_end)
        if view.job_finished or now < view.number(rec.NEXT_POLL_AT):
            return None  # the end is on its way to the row, or the pod was read recently
        return self.poll(view)

    def apply_on_end(self, view: PodView, action: str, *, by_hand: bool = False) -> str:
        """Apply ``action`` to the job's pod and record the outcome (or the failed attempt).

        Returns:
            The outcome (``stopped``, ``already EXITED``, ...) or ``retry: <error>``.
        """
        now = self.clock()
        if action == "keep":
            return self._done(view.job_id, "kept (on_end is keep)", now)
        try:
            result = perform(self.client(view), view.pod_id or "", action)
        except (RunPodError, LifecycleError) as exc:
            attempts = int(view.number(rec.ON_END_ATTEMPTS)) + 1
            rec.update(
                self.redis,
                view.job_id,
                {
                    rec.ON_END_ATTEMPTS: attempts,
                    rec.ON_END_NEXT_AT: repr(now + self.config.backoff_s(attempts)),
                    rec.ON_END_ERROR: str(exc)[:500],
                },
            )
            if by_hand:
                raise
            log.warning(
                "on_end %s of %s failed (attempt %d): %s", action, view.job_id, attempts, exc
            )
            return f"retry: {exc}"
        if by_hand:
            result += " by hand"
            rec.update(self.redis, view.job_id, {rec.STOPPED_BY_HAND: action})
        log.info("on_end of %s: pod %s %s", view.job_id, view.pod_id, result)
        return self._done(view.job_id, result, now, forget=view.job_ended)

    def poll(self, view: PodView) -> str:
        """Read the pod's status; end the job if the pod no longer trains."""
        now = self.clock()
        next_poll = {rec.NEXT_POLL_AT: repr(now + self.config.poll_s)}
        try:
            pod = self.client(view).get_pod(view.pod_id or "")
        except (RunPodError, LifecycleError) as exc:
            rec.update(self.redis, view.job_id, {**next_poll, rec.POLL_ERROR: str(exc)[:500]})
            return f"poll failed: {exc}"
        status = str(pod["status"]) if pod else GONE
        fields = {**next_poll, rec.STATUS: status, rec.STATUS_AT: repr(now)}
        drop = (rec.POLL_ERROR,)
        if status not in DEAD_STATUSES:
            drop += (rec.FAILURE_REPORTED,)  # running (again): a later death is news again
        rec.update(self.redis, view.job_id, fields, drop=drop)
        dead = status in DEAD_STATUSES and not view.get(rec.FAILURE_REPORTED)
        if dead and self.report_pod_end(view, status if pod else "gone (404)"):
            return f"pod {status}: job ended"
        return f"pod {status}"

    def report_pod_end(self, view: PodView, status: str) -> bool:
        """Publish the job's ``train_end`` because its pod no longer trains.

        Only when every event the pod sent has been folded and none was a ``train_end``: a
        pod that finished normally exits after its own ``train_end``, which must win. The
        check and the XADD are one transaction that any new event of the job aborts.

        Returns:
            True when the event was published.
        """
        by_hand = view.get(rec.STOPPED_BY_HAND)
        if by_hand:
            end, reason = "cancelled", f"the pod was {DONE_RESULT.get(by_hand, by_hand)} by hand"
        else:
            end, reason = "failed", f"RunPod reports the pod {view.pod_id} {status}"
        reason += " before the job ended (reported by the trusted side)"
        event = build_event(
            TRAIN_END, view.job_id, 0, info={"status": end, "error": reason}, ts=self.clock()
        )
        stream, meta = stream_key(view.job_id), rec.meta_key(view.job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(stream, meta)
                if pipe.xlen(stream) > 0 or as_text(pipe.hget(meta, "status")) in END_STATUSES:
                    return False  # events are still to be folded, or the job ended anyway
                pipe.multi()
                pipe.xadd(stream, {EVENT_FIELD: encode_event(event)})
                pipe.hset(meta, rec.FAILURE_REPORTED, reason)
                pipe.execute()
            except WatchError:
                return False  # something arrived meanwhile: the next poll decides again
        log.warning("job %s ended by the trusted side: %s", view.job_id, reason)
        return True

    def _done(self, job_id: str, result: str, now: float, *, forget: bool = True) -> str:
        rec.update(
            self.redis,
            job_id,
            {rec.ON_END_DONE_AT: repr(now), rec.ON_END_RESULT: result},
            drop=(rec.ON_END_NEXT_AT, rec.ON_END_ERROR),
        )
        if forget:
            self.redis.srem(rec.PODS_KEY, job_id)
        return result

    def client(self, view: PodView) -> RunPodClient:
        """Return the RunPod client for the API the job's pod was created on."""
        api_url = view.get(rec.API_URL) or self.config.api_url
        if api_url not in self._clients:
            self._clients[api_url] = self._client_for(api_url)
        return self._clients[api_url]

    def _new_client(self, api_url: str) -> RunPodClient:
        if not self.config.api_key:
            raise LifecycleError(f"{API_KEY_ENV} is not set in this trusted process")
        return RunPodClient(
            api_url, self.config.api_key, retry=self.retry, timeout_s=self.config.timeout_s
        )


def perform(client: RunPodClient, pod_id: str, action: str) -> str:
    """Send ``action`` (``stop`` or ``terminate``) to the pod; return the outcome.

    A 409 (the action is not valid in the pod's status) or 404 is an outcome, not a failure,
    when the pod is already where the action would take it.

    Raises:
        RunPodError: when RunPod did not accept the action and the pod is not there yet.
    """
    try:
        client.pod_action(pod_id, action)
        return DONE_RESULT[action]
    except RunPodError as exc:
        if exc.status == 404:
            return "already gone (404)"
        if exc.status != 409:
            raise
        pod = client.get_pod(pod_id)
        status = str(pod["status"]) if pod else GONE
        if status in SATISFIED_BY[action]:
            return f"already {status}"
        if status == "ERROR" and action == "stop":
            # RunPod allows only start and terminate there; terminating would delete the
            # volume's checkpoints, which stop promised to keep.
            return "not stopped: the pod is ERROR (terminate it by hand if it still bills)"
        raise
