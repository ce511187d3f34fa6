"""Draining many jobs at once: three pipelined round trips for all the jobs of a task.

:func:`~scorer_worker.drain.drain_job` makes about eight round trips per job (watch, head,
events, records, commit...). With thousands of live jobs each sending an event a second,
those round trips are the cost. :func:`drain_many` reads every job's levels, head and new
events in one pipelined round trip (a script per chunk of jobs, beside plain ``XRANGE``),
the records those events touch in a second, and commits every job in a third with a script
per chunk of jobs that writes a job only if its head is still the one read (a
compare-and-set). A job this path does not take (a resume or another out-of-order fact, a
dead letter, a poison event, a packed state, a lost compare-and-set) is left to
``drain_job``, which handles everything.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from producer.wire import as_text

from . import keys
from .decision import decision_basis, decision_write
from .drain import DrainResult, NeedsFullLoad, apply_event, record_poison
from .errors import InvalidEvent, PoisonEvent
from .levels import META_FIELDS, Levels, levels_from_meta
from .models import WireEvent, decode_entry
from .scripts import registered
from .settings import Settings
from .state import INITIAL_CURSOR, RECORD_PREFIXES, JobState
from .store import changed_steps, meta_fields, next_stream_id, stream_id_key
from .summary import retained_steps

# lua/drain_read.lua.
# ARGV: the batch's event count, then job ids. For each job: {head ('' when its stream is
# empty), cursor, version, written_version, status, eval_version, last_flush_at,
# refused_version, special (0/1: a poison event, a cut-off or a stall to fold: drain_job),
# stream bytes, last entry id}. Key names are those of keys.py, built here so one call covers
# hundreds of jobs (single-node Redis, like the pump's scan). The events are then read with
# plain XRANGE up to that last id, which is cheaper than passing them through Lua, and only
# for streams within the read budget: nothing a pod appends meanwhile is read.

# lua/drain_commit.lua.
# ARGV, for each job: job id, the head read ('' for none), the new head, then counted groups:
# record fields (name, value)*, meta fields (name, value)*, changes (score, step)*, decision
# fields (name, value)*, and last the stream id to trim below. A job is committed only if its
# head is still the one read (compare-and-set); returns 1 or 0 per job.
# Redis runs a script alone: these chunks keep each call to a millisecond or two.
READ_CHUNK_JOBS = 250
COMMIT_CHUNK_JOBS = 100
# Events held in memory at once by a round: the jobs share it, so 500 busy jobs take 40 events
# each per round (and more rounds), not 1,000 each (half a million decoded events).
ROUND_EVENTS = 10_000
MIN_EVENTS_PER_JOB = 10


class _NotHere(Exception):
    """Internal: this job needs ``drain_job``."""


class _Poisoned(Exception):
    """Internal: applying an event raised (a scoring bug), counted as a poison attempt."""

    def __init__(self, entry_id: str, cause: Exception) -> None:
        super().__init__(f"event {entry_id}: scoring raised {cause!r}")
        self.entry_id, self.cause = entry_id, cause


@dataclass
class _Job:
    """One job's batch in flight: what was read, and the state folded from it."""

    job_id: str
    head: str
    state: JobState
    entries: list[tuple[str, WireEvent]] = field(default_factory=list)
    loaded: dict[str, str | None] = field(default_factory=dict)
    full: bool = False  # never: a batch needing every record goes to drain_job
    stored_max_eval: int = -1  # the highest evaluation step stored before this batch
    meta: dict[str, Any] = field(default_factory=dict)  # the levels' meta fields, as read
    basis: tuple[Any, ...] = ()  # what the stored decision's header was derived from

    def load_evals(self, steps: Iterable[int]) -> None:
        """Check the evaluation records a new checkpoint needs were read with the batch."""
        for step in steps:
            stored = step <= self.stored_max_eval and step not in self.state.evals
            if stored and f"{RECORD_PREFIXES['evals']}{step}" not in self.loaded:
                raise _NotHere


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
    results, not_here = bulk.results, bulk.left
    jobs = _read(redis, job_ids, settings, count, bulk)
    _read_records(redis, jobs)
    folded = []
    for job in jobs:
        try:
            _fold(job)
            folded.append(job)
        except _Poisoned as poisoned:
            _poisoned(redis, job.job_id, poisoned, settings, bulk)
        except (NeedsFullLoad, _NotHere):
            not_here.append(job.job_id)
    lost = _commit(redis, folded)
    not_here += lost
    more: list[str] = []
    for job in folded:
        if job.job_id in lost:
            continue
        result = results[job.job_id]
        result.events += len(job.entries)
        result.commits += 1
        result.version = job.state.version
        result.caught_up = len(job.entries) < count
        # The meta hash as the commit left it: what decides the job's flush request.
        bulk.levels[job.job_id] = levels_from_meta({**job.meta, **meta_fields(job.state)})
        if not result.caught_up:
            more.append(job.job_id)
    return more


def _poisoned(
    redis: Any, job_id: str, poisoned: _Poisoned, settings: Settings, bulk: BulkResult
) -> None:
    if record_poison(redis, job_id, poisoned.entry_id, poisoned.cause, settings):
        bulk.left.append(job_id)  # given up: drain_job dead-letters it and goes on
    else:
        bulk.failed[job_id] = PoisonEvent(f"job {job_id}: {poisoned}")


def _read(
    redis: Any, job_ids: list[str], settings: Settings, count: int, bulk: BulkResult
) -> list[_Job]:
    """Read every job's levels (and, for jobs with events, the head), then their events.

    Two pipelined round trips: the first says how many bytes each stream holds, so that a
    stream past the read budget is left to ``drain_job``'s bounded read, unread here.
    """
    script = registered(redis, "drain_read")
    pipe = redis.pipeline(transaction=False)
    for start in range(0, len(job_ids), READ_CHUNK_JOBS):
        script(args=[count, *job_ids[start : start + READ_CHUNK_JOBS]], client=pipe)
    heads = [row for rows in (pipe.execute() if job_ids else []) for row in rows]
    readable = []
    for job_id, (*levels_read, special, stream_bytes, last) in zip(job_ids, heads, strict=True):
        meta = dict(zip(META_FIELDS, (as_text(v) or None for v in levels_read[2:]), strict=True))
        bulk.levels[job_id] = levels_from_meta(meta)
        if special or int(stream_bytes) > settings.drain_read_max_bytes:
            bulk.left.append(job_id)
        elif not last:  # caught up: nothing to fold or commit
            result = bulk.results[job_id]
            result.caught_up, result.version = True, bulk.levels[job_id].version
        else:
            readable.append((job_id, levels_read[0], levels_read[1], meta, as_text(last)))
    for job_id, *_, last in readable:
        # A commit trims what it drained, so the stream holds only entries after the cursor
        # (checked in _job; the compare-and-set catches a commit made meanwhile).
        pipe.xrange(keys.events(job_id), "-", last, count)
    jobs = []
    for (job_id, head, cursor, meta, _), entries in zip(
        readable, pipe.execute() if readable else [], strict=True
    ):
        job = _job(job_id, as_text(head), as_text(cursor), entries, settings)
        if job is None:
            bulk.left.append(job_id)
        else:
            job.meta = meta
            jobs.append(job)
    return jobs


def _job(job_id: str, head: str, cursor: str, entries: list, settings: Settings) -> _Job | None:
    """The job's batch, or None when it needs ``drain_job``."""
    state = JobState.from_head(job_id, head, settings.profile)
    if state.packed or state.summary is None or (cursor or INITIAL_CURSOR) != state.cursor:
        return None  # packed records, an old head, or a meta cursor that is not the head's
    if stream_id_key(entries[0][0]) <= stream_id_key(state.cursor):
        return None  # an entry at or before the cursor (never left by a commit): drain_job
    if next_stream_id(as_text(entries[-1][0])) is None:
        return None  # the largest possible id: the commit script cannot trim past it
    highest = state.summary.max_eval_step
    job = _Job(job_id, head, state, stored_max_eval=-1 if highest is None else highest)
    job.basis = decision_basis(state.summary)
    try:
        job.entries = [(as_text(i), decode_entry(fields, job_id)) for i, fields in entries]
    except InvalidEvent:  # a dead letter: drain_job writes it with the state
        return None
    if state.version > 0 and any(e.kind == "train_begin" for _, e in job.entries):
        return None  # a new attempt may drop records: a full load
    return job


def _read_records(redis: Any, jobs: list[_Job]) -> None:
    """Read the records the batches touch (and the retained evals of their checkpoints)."""
    pipe = redis.pipeline(transaction=False)
    asked = []
    for job in jobs:
        names = sorted(_wanted(job))
        if names:
            pipe.hmget(keys.state(job.job_id), names)
            asked.append((job, names))
    for (job, names), values in zip(asked, pipe.execute() if asked else [], strict=True):
        job.loaded = {name: as_text(value) for name, value in zip(names, values, strict=True)}
        job.state.load_records(job.loaded)


def _wanted(job: _Job) -> set[str]:
    summary, prefixes, stored_evals = job.state.summary, RECORD_PREFIXES, job.stored_max_eval
    names = set()
    for _, event in job.entries:
        if event.kind == "checkpoint_saved":
            names.add(f"{prefixes['saves']}{event.step}")
            steps = retained_steps(event.info.retained)
            names.update(f"{prefixes['evals']}{s}" for s in steps if s <= stored_evals)
        elif event.kind in ("train_log", "eval") and not summary.proves_absent(event):
            prefix = prefixes["train"] if event.kind == "train_log" else prefixes["evals"]
            names.add(f"{prefix}{event.step}")
    return names


def _fold(job: _Job) -> None:
    changed = False
    for entry_id, event in job.entries:
        try:
            changed = apply_event(job, event) or changed
        except (NeedsFullLoad, _NotHere):
            raise
        except Exception as exc:  # a scoring bug: counted, retried, dead-lettered at last
            raise _Poisoned(entry_id, exc) from exc
    job.state.cursor = job.entries[-1][0]
    if changed:
        job.state.version += 1


def _commit(redis: Any, jobs: list[_Job]) -> list[str]:
    """Commit each job with the compare-and-set script; return the jobs that lost the race."""
    script = registered(redis, "drain_commit")
    pipe = redis.pipeline(transaction=False)
    for start in range(0, len(jobs), COMMIT_CHUNK_JOBS):
        args: list[Any] = []
        for job in jobs[start : start + COMMIT_CHUNK_JOBS]:
            args.extend(_commit_args(job))
        script(args=args, client=pipe)
    replies = [ok for oks in pipe.execute() for ok in oks] if jobs else []
    return [job.job_id for job, ok in zip(jobs, replies, strict=True) if not ok]


def _commit_args(job: _Job) -> list[Any]:
    state = job.state
    changed = [(n, v) for n, v in state.record_fields().items() if job.loaded.get(n) != v]
    args: list[Any] = [job.job_id, job.head, state.head_json()]
    decision = decision_write(state, job.basis, full=False)
    decided = list(decision.fields.items()) if decision else []
    meta = list(meta_fields(state, time.time()).items())
    for group in (changed, meta, _scored(state), decided):
        args.append(len(group))
        for pair in group:
            args.extend(pair)
    args.append(next_stream_id(state.cursor))
    return args


def _scored(state: JobState) -> list[tuple[int, str]]:
    return [(score, step) for step, score in changed_steps(state).items()]
