"""The pump's scan: which jobs have work, filtered inside Redis (``lua/pump_scan.lua``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from producer.wire import END_STATUSES, as_text

from . import keys
from .keys import LEVEL_FIELDS
from .levels import Levels, levels_from_values
from .scripts import registered, run_chunked

# Redis runs a script alone: a chunk of jobs blocks it for about a millisecond.
SCAN_CHUNK_JOBS = 500
_BOTH_QUEUED = "3"  # queued_flags' digit: a drain (bit 1) and a flush (bit 2) are queued


@dataclass(frozen=True)
class JobWork:
    """A job the pump may act on, as :func:`scan_levels` found it."""

    job_id: str
    levels: Levels
    drain_queued: bool
    flush_queued: bool


@dataclass
class Scan:
    """What one scan found: the jobs to act on, and how many jobs are behind (queued or not)."""

    work: list[JobWork] = field(default_factory=list)
    behind_scoring: int = 0
    behind_sink: int = 0


def scan_levels(
    redis: Any, job_ids: list[str], flush_queue: str = "sink", *, queue: Any = None
) -> Scan:
    """Return the jobs among ``job_ids`` the pump may act on, with their levels.

    A job is returned when it has undrained events and no drain queued, a version the sink
    has not written and no flush queued, or an end and nothing left to drain or write (to
    retire). The queued markers are read from the queue side first (``lua/queued_flags.lua``);
    the filtering then runs on the data side (a script per chunk of jobs, one pipeline per
    node): idle jobs, and jobs whose tasks are already queued, cost no Python time, which
    matters when a pump watches thousands of jobs.

    Args:
        redis: the data side.
        queue: the queue side (the markers); ``redis`` itself by default.
    """
    flags = queued_flags(queue if queue is not None else redis, job_ids, flush_queue)
    # A job with both tasks queued has nothing the pump can do, and is behind on both sides
    # (a marker is set when its task is enqueued because of a backlog, and deleted when the
    # task starts): in a busy fleet that is most jobs, left out of the data side's scan.
    scan = Scan()
    both = sum(1 for flag in flags if flag == _BOTH_QUEUED)
    scan.behind_scoring = scan.behind_sink = both
    if both:
        kept = [i for i, flag in enumerate(flags) if flag != _BOTH_QUEUED]
        job_ids, flags = [job_ids[i] for i in kept], "".join(flags[i] for i in kept)
    args = [len(LEVEL_FIELDS), *LEVEL_FIELDS, len(END_STATUSES), *END_STATUSES]
    replies = run_chunked(
        redis, "pump_scan", job_ids, _scan_keys, args, chunk_jobs=SCAN_CHUNK_JOBS,
        call_args=lambda indexes: ["".join(flags[i] for i in indexes)],
    )  # fmt: skip
    for indexes, (scoring, sink, rows) in replies:
        scan.behind_scoring += int(scoring)
        scan.behind_sink += int(sink)
        for index, length, *values, drain_queued, flush_queued in rows:
            levels = levels_from_values(values, length)
            job_id = job_ids[indexes[index - 1]]
            scan.work.append(JobWork(job_id, levels, bool(drain_queued), bool(flush_queued)))
    return scan


def queued_flags(queue: Any, job_ids: list[str], flush_queue: str) -> str:
    """A digit per job: bit 1 set when a drain is queued for it, bit 2 when a flush is.

    One script per chunk of jobs on the queue side (one server: a call may span slots),
    answering one short string, so a pass over thousands of jobs costs little Python.
    """
    script = registered(queue, "queued_flags")
    pipe = queue.pipeline(transaction=False)
    for start in range(0, len(job_ids), SCAN_CHUNK_JOBS):
        chunk = job_ids[start : start + SCAN_CHUNK_JOBS]
        markers = [keys.queued(job, name) for job in chunk
                   for name in (keys.SCORING_QUEUE, flush_queue)]  # fmt: skip
        script(keys=markers, client=pipe)
    return "".join(as_text(flags) for flags in (pipe.execute() if job_ids else []))


def _scan_keys(job_id: str) -> list[str]:
    return [keys.events(job_id), keys.meta(job_id)]
