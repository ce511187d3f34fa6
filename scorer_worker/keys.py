"""Redis key names (DESIGN section 8). Every per-job key carries the job's hash tag."""

from __future__ import annotations

from producer.wire import decision_key, stream_key

JOBS = "ckpt:jobs"
DEAD = "ckpt:dead"
SCORING_QUEUE = "scoring"
SINK_QUEUE = "sink"
DRAIN_JOBS_TASK = "scorer_worker.tasks.drain_jobs"
FLUSH_JOBS_TASK = "sink.tasks.flush_jobs"


def events(job_id: str) -> str:
    """The job's event stream."""
    return stream_key(job_id)


def state(job_id: str) -> str:
    """The job's state, cursor and version (one JSON string)."""
    return f"ckpt:{{{job_id}}}:state"


def decision(job_id: str) -> str:
    """The job's decision: scores by step and the pick (a hash its pod may read)."""
    return decision_key(job_id)


def changes(job_id: str) -> str:
    """Steps whose records changed, scored by the state version that changed them (a zset).

    The drain adds to it; the sink reads the steps above what it wrote and trims the rest.
    """
    return f"ckpt:{{{job_id}}}:changes"


def meta(job_id: str) -> str:
    """The job's registration and what the sink last wrote (a hash)."""
    return f"ckpt:{{{job_id}}}:meta"


def queued(job_id: str, queue: str) -> str:
    """Marker: a task of ``queue`` for this job is waiting (expires, so a lost task is retried)."""
    return f"ckpt:{{{job_id}}}:queued:{queue}"


def flush_lock(job_id: str) -> str:
    """Held while a flush of this job runs: one flush per job in flight."""
    return f"ckpt:{{{job_id}}}:flush-lock"
