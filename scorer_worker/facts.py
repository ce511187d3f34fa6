"""The sink's read of a job: the scorer's committed facts and decisions, never a score.

The scorer commits a :class:`~scorer_worker.summary.Summary` in the state head with every
commit; the row is mapped from it (and from the head's attempts and end) plus the records
changed since the last write, for the metric rows. Nothing here scores or summarizes.
"""

from __future__ import annotations

from typing import Any

from . import keys
from .state import HEAD_FIELD, JobState


def load_for_row(redis: Any, job_id: str, written_version: int) -> JobState:
    """Return what a row write needs: the head with its summary, and changed records only.

    The records loaded are those of the steps changed after ``written_version``. Everything is
    loaded instead when nothing was written yet (a new or re-registered job gets all its
    metric rows) or the records are packed.

    A head without a summary (written before summaries existed) comes back with ``summary``
    None: the sink does not build one. The scorer's next commit of the job rebuilds it (a
    drain loads every record of a state without a summary), and the row waits for that.
    """
    key = keys.state(job_id)
    if written_version > 0:
        with redis.pipeline(transaction=True) as pipe:
            pipe.hget(key, HEAD_FIELD)
            pipe.zrangebyscore(keys.changes(job_id), f"({written_version}", "+inf")
            head, steps = pipe.execute()
        state = JobState.from_head(job_id, head)
        if head and state.summary is not None and not state.packed:
            names = [f"{prefix}{int(step)}" for step in steps for prefix in ("t:", "e:")]
            if names:
                state.load_records(dict(zip(names, redis.hmget(key, names), strict=True)))
            return state
    return JobState.from_fields(job_id, redis.hgetall(key))
