"""Draining one job: the per-job fallback of the pipelined drain (:mod:`scorer_worker.bulk`).

It takes every job the pipelined drain leaves: one whose batch needs every record (a resume,
a late or replaced record, a packed state), holds an invalid event to dead-letter or a poison
event given up on, has a stream past the read budget (read bounded), or has a fact the
trusted pump recorded (a cut-off, a stall). It reads, folds and commits through the same
:class:`~scorer_worker.store.StateTransaction`, :class:`~scorer_worker.fold.Fold` and
:func:`~scorer_worker.commit.commit_all` as the pipelined drain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import WatchError

from . import commit as commits
from . import keys
from .errors import PoisonEvent, StateConflict
from .fold import Fold, NeedsFullLoad, decode_batch
from .keys import JobMeta, MetaField
from .models import WireEvent
from .poison import Poisoned, cleared_fields, given_up, record_poison
from .settings import Settings
from .store import StateTransaction

MAX_CONFLICT_RETRIES = 20


@dataclass
class DrainResult:
    """What one drain did."""

    job_id: str
    events: int = 0
    dead: int = 0
    commits: int = 0
    version: int = 0
    caught_up: bool = False


def drain_job(
    redis: Any, job_id: str, settings: Settings, deadline: float | None = None
) -> DrainResult:
    """Fold every event after the job's cursor into its state, batch by batch.

    Stops when the stream is caught up or after ``settings.drain_budget_s`` (the pump then
    enqueues another drain), so one busy job cannot hold a worker forever.

    Raises:
        PoisonEvent: applying an event raised (counted; retried up to
            ``settings.poison_max_attempts`` times, then dead-lettered unapplied).
    """
    result = DrainResult(job_id)
    deadline = deadline or time.monotonic() + settings.drain_budget_s
    conflicts = 0
    while True:
        meta = JobMeta.from_hash(redis.hgetall(keys.meta(job_id)))
        try:
            more = _drain_batch(redis, job_id, settings, result, meta)
        except Poisoned as poisoned:
            if not record_poison(redis, job_id, poisoned, settings):
                raise PoisonEvent(f"job {job_id}: {poisoned}") from poisoned.cause
            continue  # re-read the batch: the event is now dead-lettered unapplied
        except (StateConflict, WatchError):
            # A concurrent drain of the same job committed first (or, for WatchError, the
            # connection dropped mid-read): read again.
            conflicts += 1
            if conflicts > MAX_CONFLICT_RETRIES:
                raise
            continue
        if not more:
            result.caught_up = True
            break
        if time.monotonic() >= deadline:
            break  # at least one batch per call, so a late job in a chunk still progresses
    return result


def _drain_batch(
    redis: Any, job_id: str, settings: Settings, result: DrainResult, meta: JobMeta
) -> bool:
    txn = StateTransaction(redis, job_id, settings.profile, wait=commits.wait_option(settings))
    if _trusted_facts(redis, txn, meta):
        result.version, result.commits = txn.state.version, result.commits + 1
        return False  # cut off (the backlog is dropped unread), or a stall to report
    entries = txn.read_events(settings.drain_batch_events, settings.drain_read_max_bytes)
    if not entries:
        result.version = txn.state.version
        return False
    dead_ids = given_up(meta, settings.poison_max_attempts)
    decoded = decode_batch(job_id, entries)
    txn.load_for(e for _, _, e in decoded if isinstance(e, WireEvent))
    fold = Fold(txn, settings.dead_payload_max_bytes, meta.secrets)
    try:
        fold.run(decoded, dead_ids)
    except NeedsFullLoad:
        # An event did not extend the run (a resume, a late or replaced record): fold the
        # batch again over the whole state; the commit rebuilds the summary.
        txn.load_all()
        fold = Fold(txn, settings.dead_payload_max_bytes, meta.secrets)
        fold.run(decoded, dead_ids)
    state = txn.state
    state.cursor = entries[-1][0]
    state.dead_letters += len(fold.dead)
    resumed = state.stalled_since is not None  # the job talks again: the report clears
    state.stalled_since = None
    if fold.changed or fold.dead or resumed:
        state.version += 1
    # The job talked: a stall the pump noted but no drain folded yet is void too.
    clear = [*cleared_fields(list(dead_ids)), MetaField.STALLED_SINCE]
    txn.commit(
        fold.dead,
        clear_meta=clear,
        dead_max_per_job=settings.dead_letters_per_job,
        drained_at=time.time(),
    )
    result.events += len(entries)
    result.dead += len(fold.dead)
    result.commits += 1
    result.version = state.version
    return len(entries) >= txn.last_read_limit  # a full batch: there may be more


def _trusted_facts(redis: Any, txn: StateTransaction, meta: JobMeta) -> bool:
    """Fold what trusted processes decided (in the meta hash) into the state; commit if so.

    Returns:
        True when this committed (or nothing more is to be drained: the job is cut off).
    """
    state = txn.state
    if meta.cut_off is not None:
        if state.cut_off is None:
            state.cut_off = meta.cut_off
            state.version += 1
        txn.commit(drop_stream=True)  # the backlog goes unread, in the background
        return True
    stalled = meta.stalled_since
    quiet = stalled is not None and state.stalled_since is None and state.end is None
    if quiet and redis.xlen(keys.events(txn.job_id)) == 0:  # events clear it anyway
        state.stalled_since = stalled
        state.version += 1
        txn.commit()
        return True
    return False
