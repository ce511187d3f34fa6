"""A job's levels: how far its stream, state and row are, as the pump and the sink compare them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producer.wire import as_text, is_finished

from . import keys
from .keys import LEVEL_FIELDS, JobMeta


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

    @classmethod
    def of(cls, meta: JobMeta, undrained: int = 0) -> Levels:
        """The levels a job's meta record (and its stream's length) give."""
        return cls(
            int(undrained), meta.version, meta.written_version, meta.status,
            meta.eval_version, meta.last_flush_at, meta.refused_version,
        )  # fmt: skip

    @property
    def eval_changed(self) -> bool:
        """True when an evaluation changed since the row was last written (users wait)."""
        return self.eval_version > self.written

    @property
    def finished(self) -> bool:
        """True when the job's latest attempt ended."""
        return is_finished(self.status)

    @property
    def sink_behind(self) -> bool:
        """True when the state has a version the sink neither wrote nor refused for good."""
        return self.version > max(self.written, self.refused)


def levels_from_values(values: list[Any], undrained: int = 0) -> Levels:
    """Build levels from the values of :data:`~scorer_worker.keys.LEVEL_FIELDS`, in order.

    Parsed here rather than through :class:`JobMeta`: the pump reads thousands a pass.
    """
    version, written, status, eval_version, last_flush_at, refused = (
        as_text(v) or None for v in values
    )
    return Levels(
        int(undrained), int(version or 0), int(written or 0), status, int(eval_version or 0),
        float(last_flush_at) if last_flush_at else None, int(refused or 0),
    )  # fmt: skip


def read_levels(redis: Any, job_ids: list[str]) -> list[Levels]:
    """Read the levels of ``job_ids`` in one pipelined round trip."""
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xlen(keys.events(job_id))
        pipe.hmget(keys.meta(job_id), *LEVEL_FIELDS)
    replies = pipe.execute() if job_ids else []
    return [
        levels_from_values(values, length)
        for length, values in zip(replies[::2], replies[1::2], strict=True)
    ]
