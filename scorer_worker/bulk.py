"""Draining many jobs at once: four pipelined round trips for all the jobs of a task.

:func:`~scorer_worker.drain.drain_job` makes about eight round trips per job (watch, head,
events, records, commit...). With thousands of live jobs each sending an event a second,
those round trips are the cost. :func:`drain_many` reads every job's head and meta in one
pipelined round trip, their new events in a second, the records those events touch in a
third, and commits each job with a compare-and-set script (the head must still be the one
read) in a fourth. A job this path does not take (a resume or another out-of-order fact, a
dead letter, a poison event, a packed state, a lost compare-and-set) is left to ``drain_job``,
which handles everything.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .drain import DrainResult, NeedsFullLoad, apply_event, record_poison
from .errors import InvalidEvent, PoisonEvent
from .models import WireEvent, decode_entry
from .settings import Settings
from .state import HEAD_FIELD, RECORD_PREFIXES, JobState
from .store import changed_steps, meta_fields, next_stream_id
from .summary import retained_steps

# KEYS: state, meta, changes, events. ARGV: the head read ('' for none), the new head, then
# counted groups: record fields (name, value)*, meta fields (name, value)*, changes (score,
# step)*, and last the stream id to trim below.
COMMIT_SCRIPT = """
local head = redis.call('HGET', KEYS[1], 'head')
if (head or '') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'head', ARGV[2])
local i = 3
for _, target in ipairs({'state', 'meta', 'changes'}) do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    if target == 'state' then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    elseif target == 'meta' then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    else redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i + 1]) end
    i = i + 2
  end
end
redis.call('XTRIM', KEYS[4], 'MINID', ARGV[i])
return 1
"""


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


def drain_many(redis: Any, job_ids: list[str], settings: Settings, deadline: float) -> BulkResult:
    """Drain the jobs' streams in pipelined rounds until caught up or past ``deadline``.

    A job whose event raised while being applied (a scoring bug) is counted as a poison
    attempt and reported in ``failed``, like ``drain_job`` raising ``PoisonEvent``.
    """
    bulk = BulkResult({job_id: DrainResult(job_id) for job_id in job_ids}, [], {})
    pending = list(job_ids)
    while pending:
        more = _round(redis, pending, settings, bulk)
        pending = [job_id for job_id in more if job_id not in bulk.left]
        if time.monotonic() >= deadline:
            break
    for job_id in [*bulk.left, *bulk.failed]:
        bulk.results.pop(job_id, None)
    return bulk


def _round(redis: Any, job_ids: list[str], settings: Settings, bulk: BulkResult) -> list[str]:
    """One batch per job; return the jobs with more to drain."""
    results, not_here = bulk.results, bulk.left
    jobs = _read_heads(redis, job_ids, settings, not_here)
    _read_events(redis, jobs, settings, not_here)
    jobs = [job for job in jobs if job.job_id not in not_here]
    for job in jobs:
        if not job.entries:
            results[job.job_id].caught_up = True
            results[job.job_id].version = job.state.version
    jobs = [job for job in jobs if job.entries]
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
        result.caught_up = len(job.entries) < settings.drain_batch_events
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


def _read_heads(redis: Any, job_ids: list[str], settings: Settings, not_here: list) -> list[_Job]:
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(keys.state(job_id), HEAD_FIELD)
        pipe.hkeys(keys.meta(job_id))
    replies = pipe.execute()
    jobs = []
    for job_id, head, meta_names in zip(job_ids, replies[::2], replies[1::2], strict=True):
        head = _text(head) or ""
        state = JobState.from_head(job_id, head, settings.profile)
        poisoned = any(_text(name).startswith("poison:") for name in meta_names)
        if poisoned or state.packed or state.summary is None:
            not_here.append(job_id)
        else:
            highest = state.summary.max_eval_step
            stored_max_eval = -1 if highest is None else highest
            jobs.append(_Job(job_id, head, state, stored_max_eval=stored_max_eval))
    return jobs


def _read_events(redis: Any, jobs: list[_Job], settings: Settings, not_here: list) -> None:
    pipe = redis.pipeline(transaction=False)
    for job in jobs:
        pipe.xrange(
            keys.events(job.job_id), f"({job.state.cursor}", "+", settings.drain_batch_events
        )
    for job, entries in zip(jobs, pipe.execute(), strict=True):
        try:
            job.entries = [(_text(i), decode_entry(fields, job.job_id)) for i, fields in entries]
        except InvalidEvent:  # a dead letter: drain_job writes it with the state
            not_here.append(job.job_id)
            continue
        if job.state.version > 0 and any(e.kind == "train_begin" for _, e in job.entries):
            not_here.append(job.job_id)  # a new attempt may drop records: a full load


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
        job.loaded = {name: _text(value) for name, value in zip(names, values, strict=True)}
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
    if not jobs:
        return []
    script = redis.register_script(COMMIT_SCRIPT)
    pipe = redis.pipeline(transaction=False)
    for job in jobs:
        state = job.state
        fields = state.record_fields()
        changed = [(n, v) for n, v in fields.items() if job.loaded.get(n) != v]
        args: list[Any] = [job.head, state.head_json()]
        for group in (changed, list(meta_fields(state).items()), _scored(state)):
            args.append(len(group))
            for pair in group:
                args.extend(pair)
        args.append(next_stream_id(state.cursor))
        job_keys = [keys.state(job.job_id), keys.meta(job.job_id), keys.changes(job.job_id)]
        script(keys=[*job_keys, keys.events(job.job_id)], args=args, client=pipe)
    return [job.job_id for job, ok in zip(jobs, pipe.execute(), strict=True) if not ok]


def _scored(state: JobState) -> list[tuple[int, str]]:
    return [(score, step) for step, score in changed_steps(state).items()]


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
