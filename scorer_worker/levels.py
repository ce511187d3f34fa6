"""A job's levels, as the pump compares them, and when its row is due for a write.

Write coalescing: a job logging every step would otherwise get a row write per drain. The
rule: write at once when the job ended, was never written, or an evaluation changed since the
last write (evaluations move the best checkpoint, which users wait for; they come seconds
apart); otherwise (train logs) write at most every ``min_interval_s``. The pump
applies the rule on every pass, so a deferred write is made as soon as it is due: no wake-up
is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producer.wire import as_text, is_finished

from . import keys
from .scripts import registered

META_FIELDS = (
    "version", "written_version", "status", "eval_version", "last_flush_at", "refused_version",
)  # fmt: skip


@dataclass(frozen=True)
class Levels:
    """How far a job's stream, state and row are (from its stream and meta hash)."""

    undrained: int = 0
    version: int = 0
    written: int = 0
    status: str | None = None
    eval_version: int = 0
    last_flush_at: float | None = None
    refused: int = 0  # the highest version the sink refused for good (a permanent error)

    @property
    def eval_changed(self) -> bool:
        """True when an evaluation changed since the row was last written (users wait)."""
        return self.eval_version > self.written

    @property
    def finished(self) -> bool:
        """True when the job's latest attempt ended."""
        return is_finished(self.status)

    def flush_due(self, now: float, min_interval_s: float) -> bool:
        """Return True when the row should be written now (see the module docstring).

        A version the sink refused for good (wrong token, missing row) is not retried; the
        next version, or a new registration, is.
        """
        if self.version <= max(self.written, self.refused):
            return False
        if self.finished or self.last_flush_at is None or self.eval_changed:
            return True
        return now - self.last_flush_at >= min_interval_s


def read_levels(redis: Any, job_ids: list[str]) -> list[Levels]:
    """Read the levels of ``job_ids`` in one pipelined round trip."""
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xlen(keys.events(job_id))
        pipe.hmget(keys.meta(job_id), *META_FIELDS)
    replies = pipe.execute()
    return [_levels(length, meta) for length, meta in zip(replies[::2], replies[1::2], strict=True)]


# ARGV: job ids. For each job with work (undrained events, an unwritten version, or an end),
# returns [id, stream length, version, written_version, status, eval_version, last_flush_at,
# refused_version, scoring task queued (0/1), sink task queued (0/1)]. The key names are those
# of keys.py; they are built here so one call covers hundreds of jobs (single-node Redis).
SCAN_CHUNK_JOBS = 500  # Redis runs a script alone: a chunk blocks it for about a millisecond


@dataclass(frozen=True)
class JobWork:
    """A job with something to do, as :func:`scan_levels` found it."""

    job_id: str
    levels: Levels
    drain_queued: bool
    flush_queued: bool


def scan_levels(redis: Any, job_ids: list[str]) -> list[JobWork]:
    """Return the jobs among ``job_ids`` with work to do, with their levels.

    The filtering runs in Redis (a script per chunk of jobs, the chunks pipelined): idle jobs
    cost no Python time, which matters when a pump watches thousands of jobs.
    """
    script = registered(redis, "pump_scan")
    pipe = redis.pipeline(transaction=False)
    for start in range(0, len(job_ids), SCAN_CHUNK_JOBS):
        script(args=job_ids[start : start + SCAN_CHUNK_JOBS], client=pipe)
    work = []
    for rows in pipe.execute() if job_ids else []:
        for job_id, length, *meta, drain_queued, flush_queued in rows:
            levels = _levels(length, [as_text(v) or None for v in meta])
            work.append(JobWork(as_text(job_id), levels, bool(drain_queued), bool(flush_queued)))
    return work


def levels_from_meta(meta: dict[str, Any]) -> Levels:
    """Build levels from a job's meta hash already read (stream length not included)."""
    return _levels(0, [meta.get(name) for name in META_FIELDS])


def _levels(length: int, meta: list[Any]) -> Levels:
    version, written, status, eval_version, last_flush_at, refused = (as_text(v) for v in meta)
    return Levels(
        int(length),
        int(version or 0),
        int(written or 0),
        status,
        int(eval_version or 0),
        float(last_flush_at) if last_flush_at else None,
        int(refused or 0),
    )
