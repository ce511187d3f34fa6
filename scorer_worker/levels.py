"""A job's levels, as the pump compares them, and when its row is due for a write.

Write coalescing: a job logging every step would otherwise get a row write per drain. The
rule: write at once when the job ended or was never written; when an evaluation changed since
the last write, write once ``min_interval_s / 10`` has passed (evaluations move the best
checkpoint, which users wait for); otherwise write at most every ``min_interval_s``. The pump
applies the rule on every pass, so a deferred write is made as soon as it is due: no wake-up
is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import keys

FINISHED = ("completed", "failed", "cancelled")
EVAL_INTERVAL_FRACTION = 0.1
_META_FIELDS = ("version", "written_version", "status", "eval_version", "last_flush_at")


@dataclass(frozen=True)
class Levels:
    """How far a job's stream, state and row are (from its stream and meta hash)."""

    undrained: int = 0
    version: int = 0
    written: int = 0
    status: str | None = None
    eval_version: int = 0
    last_flush_at: float | None = None

    @property
    def finished(self) -> bool:
        """True when the job's latest attempt ended."""
        return self.status in FINISHED

    def flush_due(self, now: float, min_interval_s: float) -> bool:
        """Return True when the row should be written now (see the module docstring)."""
        if self.version <= self.written:
            return False
        if self.finished or self.last_flush_at is None:
            return True
        elapsed = now - self.last_flush_at
        if self.eval_version > self.written:
            return elapsed >= min_interval_s * EVAL_INTERVAL_FRACTION
        return elapsed >= min_interval_s


def read_levels(redis: Any, job_ids: list[str]) -> list[Levels]:
    """Read the levels of ``job_ids`` in one pipelined round trip."""
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xlen(keys.events(job_id))
        pipe.hmget(keys.meta(job_id), *_META_FIELDS)
    replies = pipe.execute()
    return [_levels(length, meta) for length, meta in zip(replies[::2], replies[1::2], strict=True)]


def levels_from_meta(meta: dict[str, Any]) -> Levels:
    """Build levels from a job's meta hash already read (stream length not included)."""
    return _levels(0, [meta.get(name) for name in _META_FIELDS])


def _levels(length: int, meta: list[Any]) -> Levels:
    version, written, status, eval_version, last_flush_at = (_text(v) for v in meta)
    return Levels(
        int(length),
        int(version or 0),
        int(written or 0),
        status,
        int(eval_version or 0),
        float(last_flush_at) if last_flush_at else None,
    )


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
