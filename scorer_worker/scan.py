"""The pump's scan: which jobs have work, filtered inside Redis (``lua/pump_scan.lua``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producer.wire import END_STATUSES

from . import keys
from .keys import LEVEL_FIELDS
from .levels import Levels, levels_from_values
from .scripts import registered

# Redis runs a script alone: a chunk of jobs blocks it for about a millisecond.
SCAN_CHUNK_JOBS = 500
SCAN_KEYS_PER_JOB = 4  # events, meta, the drain's and the flush's queued markers


@dataclass(frozen=True)
class JobWork:
    """A job with something to do, as :func:`scan_levels` found it."""

    job_id: str
    levels: Levels
    drain_queued: bool
    flush_queued: bool


def scan_levels(redis: Any, job_ids: list[str], flush_queue: str = "sink") -> list[JobWork]:
    """Return the jobs among ``job_ids`` with work to do, with their levels.

    Work is undrained events, an unwritten version, or an end. The filtering runs in Redis
    (a script per chunk of jobs, the chunks pipelined): idle jobs cost no Python time, which
    matters when a pump watches thousands of jobs.
    """
    script = registered(redis, "pump_scan")
    args = [len(LEVEL_FIELDS), *LEVEL_FIELDS, *END_STATUSES]
    chunks = [job_ids[i : i + SCAN_CHUNK_JOBS] for i in range(0, len(job_ids), SCAN_CHUNK_JOBS)]
    pipe = redis.pipeline(transaction=False)
    for chunk in chunks:
        script(keys=[k for job in chunk for k in _scan_keys(job, flush_queue)], args=args,
               client=pipe)  # fmt: skip
    work = []
    for chunk, rows in zip(chunks, pipe.execute() if chunks else [], strict=True):
        for index, length, *values, drain_queued, flush_queued in rows:
            levels = levels_from_values(values, length)
            work.append(JobWork(chunk[index - 1], levels, bool(drain_queued), bool(flush_queued)))
    return work


def _scan_keys(job_id: str, flush_queue: str) -> list[str]:
    return [
        keys.events(job_id),
        keys.meta(job_id),
        keys.queued(job_id, keys.SCORING_QUEUE),
        keys.queued(job_id, flush_queue),
    ]
