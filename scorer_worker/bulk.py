"""Draining many jobs at once: three pipelined round trips for all the jobs of a task.

With thousands of live jobs each sending an event a second, round trips are the cost.
:func:`drain_many` reads every job's levels, head and new events in one pipelined round trip
(``lua/drain_read.lua`` per chunk of jobs, beside plain ``XRANGE``), the records those
events touch in a second, and commits every job in a third (:func:`~scorer_worker.commit.
commit_all`, the one commit path). Each job is folded by the same
:class:`~scorer_worker.store.StateTransaction` and :class:`~scorer_worker.fold.Fold` as in
:func:`~scorer_worker.drain.drain_job`, which is the fallback: a job this path does not take
(a resume or another out-of-order fact, an invalid event, a poison event given up on, a
packed state, a cut-off or a stall, a lost compare-and-set) is left to it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from producer.wire import as_text

from . import commit as commits
from . import keys
from .drain import DrainResult
from .errors import InvalidEvent, PoisonEvent
from .fold import Fold, NeedsFullLoad, decode_batch
from .keys import LEVEL_FIELDS, POISON_PREFIX, MetaField
from .levels import Levels, levels_from_values
from .poison import Poisoned, record_poison
from .scripts import per_job, run_chunked
from .settings import Settings
from .state import HEAD_FIELD, INITIAL_CURSOR
from .store import StateTransaction
from .streams import next_stream_id, stream_id_key

READ_CHUNK_JOBS = 250  # Redis runs a script alone: a chunk keeps a call to a millisecond
# Events held in memory at once by a round: the jobs share it, so 500 busy jobs take 40 events
# each per round (and more rounds), not 1,000 each (half a million decoded events).
ROUND_EVENTS = 10_000
MIN_EVENTS_PER_JOB = 10
_READ_FIELDS = (MetaField.CURSOR, *LEVEL_FIELDS)
_SPECIAL_FIELDS = (MetaField.CUT_OFF, MetaField.STALLED_SINCE)  # facts for drain_job to fold


@dataclass
class _Batch:
    """One job's batch in flight: its transaction, its entries decoded, its levels read."""

    txn: StateTransaction
    decoded: list[tuple[str, Any, Any]]
    levels: Levels
    wanted: set[str]  # the record fields to read before folding


@dataclass
class BulkResult:
    """What :func:`drain_many` did: results, jobs left for ``drain_job``, jobs that failed."""

    results: dict[str, DrainResult]
    left: list[str]
    failed: dict[str, Exception]
    levels: dict[str, Levels] = field(default_factory=dict)  # after the drain, for flushes


def drain_many(redis: Any, job_ids: list[str], settings: Settings, deadline: float) -> BulkResult:
    """Drain the jobs' streams in pipelined rounds until caught up or past ``deadline``.

    A job whose event raised while being applied (a scoring bug) is counted as a poison
    attempt and reported in ``failed``, like ``drain_job`` raising ``PoisonEvent``.
    """
    bulk = BulkResult({job_id: DrainResult(job_id) for job_id in job_ids}, [], {})
    pending = list(job_ids)
    while pending:
        share = max(MIN_EVENTS_PER_JOB, ROUND_EVENTS // len(pending))
        more = _round(redis, pending, settings, min(settings.drain_batch_events, share), bulk)
        pending = [job_id for job_id in more if job_id not in bulk.left]
        if time.monotonic() >= deadline:
            break
    for job_id in [*bulk.left, *bulk.failed]:
        bulk.results.pop(job_id, None)
        bulk.levels.pop(job_id, None)
    return bulk


def _round(
    redis: Any, job_ids: list[str], settings: Settings, count: int, bulk: BulkResult
) -> list[str]:
    """One batch of at most ``count`` events per job; return the jobs with more to drain."""
    batches = _read(redis, job_ids, settings, count, bulk)
    _read_records(redis, batches)
    folded = [b for b in batches if _fold(redis, b, settings, bulk)]
    drained_at = time.time()
    prepared = [b.txn.prepare(drained_at=drained_at) for b in folded]
    written = commits.commit_all(redis, prepared, commits.wait_option(settings))
    more: list[str] = []
    for batch, ok in zip(folded, written, strict=True):
        job_id, state = batch.txn.job_id, batch.txn.state
        if not ok:
            bulk.left.append(job_id)  # lost the compare-and-set: drain_job reads again
            continue
        result = bulk.results[job_id]
        result.events += len(batch.decoded)
        result.commits += 1
        result.version = state.version
        result.caught_up = len(batch.decoded) < count
        # The levels as the commit left them: what decides the job's flush request.
        bulk.levels[job_id] = dataclasses.replace(
            batch.levels, version=state.version, status=state.status,
            eval_version=state.eval_version,
        )  # fmt: skip
        if not result.caught_up:
            more.append(job_id)
    return more


def _fold(redis: Any, batch: _Batch, settings: Settings, bulk: BulkResult) -> bool:
    """Fold the batch; return False when the job is left to ``drain_job`` or failed."""
    txn = batch.txn
    try:
        fold = Fold(txn, settings.dead_payload_max_bytes, ())
        fold.run(batch.decoded, {})
    except Poisoned as poisoned:
        if record_poison(redis, txn.job_id, poisoned, settings):
            bulk.left.append(txn.job_id)  # given up: drain_job dead-letters it and goes on
        else:
            bulk.failed[txn.job_id] = PoisonEvent(f"job {txn.job_id}: {poisoned}")
        return False
    except NeedsFullLoad:
        bulk.left.append(txn.job_id)
        return False
    txn.state.cursor = batch.decoded[-1][0]
    if fold.changed:
        txn.state.version += 1
    return True


def _read(
    redis: Any, job_ids: list[str], settings: Settings, count: int, bulk: BulkResult
) -> list[_Batch]:
    """Read every job's levels (and, for jobs with events, the head), then their events.

    Two pipelined round trips: the first says how many bytes each stream holds, so that a
    stream past the read budget is left to ``drain_job``'s bounded read, unread here.
    """
    args = [count, HEAD_FIELD, POISON_PREFIX, len(_READ_FIELDS), *_READ_FIELDS, *_SPECIAL_FIELDS]
    replies = run_chunked(
        redis, "drain_read", job_ids, _read_keys, args, chunk_jobs=READ_CHUNK_JOBS
    )
    heads = per_job(replies, len(job_ids))
    readable = []
    for job_id, (head, cursor, *values, special, size, last) in zip(job_ids, heads, strict=True):
        levels = bulk.levels[job_id] = levels_from_values(values)
        if special or int(size) > settings.drain_read_max_bytes:
            bulk.left.append(job_id)
        elif not last:  # caught up: nothing to fold or commit
            result = bulk.results[job_id]
            result.caught_up, result.version = True, levels.version
        else:
            readable.append((job_id, head, as_text(cursor), levels, as_text(last)))
    pipe = redis.pipeline(transaction=False)  # a cluster's pipeline sends one per node
    for job_id, *_, last in readable:
        # A commit trims what it drained, so the stream holds only entries after the cursor
        # (checked in _batch; the compare-and-set catches a commit made meanwhile).
        pipe.xrange(keys.events(job_id), "-", last, count)
    batches = []
    for (job_id, head, cursor, levels, _), entries in zip(
        readable, pipe.execute() if readable else [], strict=True
    ):
        batch = _batch(redis, job_id, head, cursor, entries, levels, settings)
        if batch is None:
            bulk.left.append(job_id)
        else:
            batches.append(batch)
    return batches


def _read_keys(job_id: str) -> list[str]:
    return [keys.meta(job_id), keys.state(job_id), keys.events(job_id)]


def _batch(
    redis: Any, job_id: str, head: Any, cursor: str, entries: list, levels: Levels,
    settings: Settings,
) -> _Batch | None:  # fmt: skip
    """The job's batch, or None when it needs ``drain_job``."""
    wait = commits.wait_option(settings)
    txn = StateTransaction(redis, job_id, settings.profile, head=head or None, wait=wait)
    state = txn.state
    if (cursor or INITIAL_CURSOR) != state.cursor:
        return None  # a meta cursor that is not the head's
    if stream_id_key(entries[0][0]) <= stream_id_key(state.cursor):
        return None  # an entry at or before the cursor (never left by a commit): drain_job
    if next_stream_id(as_text(entries[-1][0])) is None:
        return None  # the largest possible id: drain_job trims past it
    decoded = decode_batch(job_id, [(as_text(i), fields) for i, fields in entries])
    if any(isinstance(event, InvalidEvent) for _, _, event in decoded):
        return None  # a dead letter: drain_job redacts and writes it with the state
    wanted = txn.wanted_for(event for _, _, event in decoded)
    if wanted is None:
        return None  # every record is needed (packed, old head, new attempt): drain_job
    return _Batch(txn, decoded, levels, wanted)


def _read_records(redis: Any, batches: list[_Batch]) -> None:
    """Read the records the batches touch (and the retained evals of their checkpoints)."""
    pipe = redis.pipeline(transaction=False)
    asked = []
    for batch in batches:
        names = sorted(batch.wanted)
        if names:
            pipe.hmget(keys.state(batch.txn.job_id), names)
            asked.append((batch, names))
    for (batch, names), values in zip(asked, pipe.execute() if asked else [], strict=True):
        batch.txn.add_records(dict(zip(names, values, strict=True)))
