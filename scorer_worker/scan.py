"""The pump's scan: which jobs have work, filtered inside Redis (``lua/pump_scan.lua``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from producer.wire import END_STATUSES

from . import keys
from .keys import LEVEL_FIELDS
from .levels import Levels, levels_from_values
from .scripts import registered

# Redis runs a script alone: a chunk of jobs blocks it for about a millisecond.
SCAN_CHUNK_JOBS = 500


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


def scan_levels(redis: Any, job_ids: list[str], flush_queue: str = "sink") -> Scan:
    """Return the jobs among ``job_ids`` the pump may act on, with their levels.

    A job is returned when it has undrained events and no drain queued, a version the sink
    has not written and no flush queued, or an end and nothing left to drain or write (to
    retire). The filtering runs in Redis (a script per chunk of jobs, the chunks
    pipelined): idle jobs, and jobs whose tasks are already queued, cost no Python time,
    which matters when a pump watches thousands of jobs.
    """
    script = registered(redis, "pump_scan")
    args = [len(LEVEL_FIELDS), *LEVEL_FIELDS, *END_STATUSES]
    chunks = [job_ids[i : i + SCAN_CHUNK_JOBS] for i in range(0, len(job_ids), SCAN_CHUNK_JOBS)]
    pipe = redis.pipeline(transaction=False)
    for chunk in chunks:
        script(keys=[k for job in chunk for k in _scan_keys(job, flush_queue)], args=args,
               client=pipe)  # fmt: skip
    scan = Scan()
    for chunk, (scoring, sink, rows) in zip(chunks, pipe.execute() if chunks else [], strict=True):
        scan.behind_scoring += int(scoring)
        scan.behind_sink += int(sink)
        for index, length, *values, drain_queued, flush_queued in rows:
            levels = levels_from_values(values, length)
            job_id = chunk[index - 1]
            scan.work.append(JobWork(job_id, levels, bool(drain_queued), bool(flush_queued)))
    return scan


def _scan_keys(job_id: str, flush_queue: str) -> list[str]:
    return [
        keys.events(job_id),
        keys.meta(job_id),
        keys.queued(job_id, keys.SCORING_QUEUE),
        keys.queued(job_id, flush_queue),
    ]
