"""Flushing a job's latest state to its row, one flush per job at a time."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import LockError
from redis.lock import Lock

from scorer_worker import keys
from scorer_worker.coalescing import flush_due
from scorer_worker.errors import PermanentSinkError, TransientSinkError
from scorer_worker.facts import load_for_row
from scorer_worker.keys import JobMeta, MetaField
from scorer_worker.levels import Levels
from scorer_worker.scripts import registered
from scorer_worker.settings import Settings
from scorer_worker.state import JobState

from .rows import job_row, metric_rows
from .writers import retrying_write, writer_from_settings

log = logging.getLogger(__name__)

LUA_DIR = Path(__file__).with_name("lua")


@dataclass
class FlushResult:
    """What one flush did: ``written``, ``stale``, ``up-to-date``, ``deferred``, ``busy``,
    ``refused`` (this version hit a permanent error before) or ``error``."""

    job_id: str
    outcome: str
    version: int = 0
    metrics: int = 0


def flush_job(redis: Any, job_id: str, settings: Settings, writer: Any = None) -> FlushResult:
    """Write the job's latest state to its row if the sink is behind.

    A transient failure after the retries are spent is recorded on the job and left for the
    next pump pass; a permanent one (missing row, wrong token) is recorded and not retried
    until the job is registered again or its state moves on.
    """
    # thread_local=False: the lock object is this call's own, and a writer may sleep (renew)
    # from another thread.
    lock = redis.lock(
        keys.flush_lock(job_id),
        timeout=settings.flush_lock_ttl_s,
        blocking=False,
        thread_local=False,
    )
    if not lock.acquire():
        return FlushResult(job_id, "busy")
    try:
        return _flush_locked(
            redis, job_id, settings, writer, _LockRenewer(lock, settings.flush_lock_ttl_s)
        )
    finally:
        _release(lock, job_id)


class _LockRenewer:
    """Sleeps between write attempts and extends the flush lock, which must outlive retries."""

    def __init__(self, lock: Lock, ttl_s: int) -> None:
        self.lock, self.ttl_s = lock, ttl_s

    def __call__(self, seconds: float) -> None:
        try:
            self.lock.extend(self.ttl_s + int(seconds) + 1, replace_ttl=True)
        except LockError:
            # Expired (and maybe taken): the retry goes on, as the row's version condition
            # keeps a second writer from overwriting a newer row.
            log.warning("flush lock of %s lost while retrying", self.lock.name)
        time.sleep(seconds)


def _release(lock: Lock, job_id: str) -> None:
    try:
        lock.release()  # deletes the key only if it still holds this lock's token
    except LockError:
        log.warning("flush lock of %s expired before the flush ended", job_id)


def _flush_locked(
    redis: Any, job_id: str, settings: Settings, writer: Any, sleep: _LockRenewer
) -> FlushResult:
    with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.meta(job_id))
        pipe.exists(keys.state(job_id))
        meta, state_exists = pipe.execute()
    meta = JobMeta.from_hash(meta)
    levels = Levels.of(meta)
    written = levels.written
    if not state_exists:
        return FlushResult(job_id, "up-to-date")
    if levels.version <= levels.written:
        return FlushResult(job_id, "up-to-date", levels.version)
    if levels.version <= levels.refused:
        return FlushResult(job_id, "refused", levels.version)  # a permanent error, recorded
    if not flush_due(levels, time.time(), settings.flush_min_interval_s):
        # Coalescing: the pump enqueues the write again as soon as it is due.
        return FlushResult(job_id, "deferred", levels.version)
    state = load_for_row(redis, job_id, written)
    if state.version <= written:
        return FlushResult(job_id, "up-to-date", state.version)
    if state.summary is None:
        return _await_summary(redis, job_id, state.version)
    if not meta.token:
        _record(redis, job_id, state.version, "permanent", "job is not registered (no token)")
        return FlushResult(job_id, "error", state.version)
    own_writer = writer is None
    try:
        writer = writer or writer_from_settings(settings)
    except TransientSinkError as exc:  # e.g. a locked SQLite file: like any transient failure
        _record_transient(redis, job_id, exc)
        return FlushResult(job_id, "error", state.version)
    try:
        return _write(redis, job_id, meta.secrets, state, written, settings, writer, sleep)
    finally:
        if own_writer:
            writer.close()


def _write(
    redis: Any,
    job_id: str,
    secrets: tuple[str, ...],
    state: JobState,
    written: int,
    settings: Settings,
    writer: Any,
    sleep: _LockRenewer,
) -> FlushResult:
    token = secrets[0]  # the job token comes first
    row, metrics = job_row(state, secrets=secrets), metric_rows(state, since_version=written)
    try:
        outcome = retrying_write(
            writer, job_id, token, row, metrics,
            settings.sink_retry_attempts, settings.sink_retry_max_s, sleep=sleep,
        )  # fmt: skip
    except PermanentSinkError as exc:
        _record(redis, job_id, state.version, "permanent", str(exc))
        return FlushResult(job_id, "error", state.version)
    except TransientSinkError as exc:
        _record_transient(redis, job_id, exc)
        return FlushResult(job_id, "error", state.version)
    # last_flush_at: what the coalescing rule (flush_due) measures from.
    fields = [MetaField.WRITTEN_VERSION, MetaField.LAST_FLUSH_AT, *_ERROR_FIELDS]
    written_keys = [keys.meta(job_id), keys.changes(job_id)]
    args = [state.version, *fields, repr(time.time())]
    registered(redis, "written", LUA_DIR)(keys=written_keys, args=args)
    return FlushResult(job_id, str(outcome.value), state.version, len(metrics))


def _record_transient(redis: Any, job_id: str, exc: Exception) -> None:
    # Left for the next pump pass: written_version stays behind, so the flush is enqueued again.
    log.warning("flush of %s failed after retries: %s", job_id, exc)
    _record_error(redis, job_id, str(exc), "transient")


def _record(redis: Any, job_id: str, version: int, kind: str, message: str) -> None:
    log.error("row of job %s not written (%s): %s", job_id, kind, message)
    _record_error(redis, job_id, message, kind)
    # Not counted as written: the row still lags, and status says so; the version is only
    # marked refused, so the pump does not retry it (the next version, or re-registering, is).
    args = [version, MetaField.REFUSED_VERSION]
    registered(redis, "raise_level", LUA_DIR)(keys=[keys.meta(job_id)], args=args)


def _await_summary(redis: Any, job_id: str, version: int) -> FlushResult:
    # A state committed before summaries existed: the sink does not score, so the row waits
    # for the scorer's next commit of the job, which rebuilds the summary.
    message = "state has no summary yet (written by an older scorer); waiting for a rebuild"
    log.warning("row of job %s not written: %s", job_id, message)
    _record_error(redis, job_id, message, "transient")
    return FlushResult(job_id, "deferred", version)


_ERROR_FIELDS = (MetaField.SINK_ERROR, MetaField.SINK_ERROR_KIND)


def _record_error(redis: Any, job_id: str, message: str, kind: str) -> None:
    redis.hset(keys.meta(job_id), mapping=dict(zip(_ERROR_FIELDS, (message, kind), strict=True)))
