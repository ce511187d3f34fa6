"""Redis key names (DESIGN section 8). Every per-job key carries the job's hash tag."""

from __future__ import annotations

from producer.wire import decision_key, is_valid_job_id, stream_key

JOBS = "ckpt:jobs"
DEAD_PATTERN = "ckpt:{*}:dead"  # SCAN pattern of every job's dead letters
SCORING_QUEUE = "scoring"
DRAIN_JOBS_TASK = "scorer_worker.tasks.drain_jobs"


def events(job_id: str) -> str:
    """The job's event stream."""
    return stream_key(job_id)


def state(job_id: str) -> str:
    """The job's state, cursor and version (one JSON string)."""
    return f"ckpt:{{{job_id}}}:state"


def decision(job_id: str) -> str:
    """The job's decision: scores by step and the pick (a hash its pod may read)."""
    return decision_key(job_id)


def dead(job_id: str) -> str:
    """The job's dead letters (a capped stream, committed with the state in one slot).

    Per job, so that no job can evict another's: a pod that floods junk fills only its own.
    """
    return f"ckpt:{{{job_id}}}:dead"


def job_of_dead_key(key: str | bytes) -> str | None:
    """Return the job id of a :func:`dead` key, or None for any other key."""
    text = key.decode() if isinstance(key, bytes) else key
    if text.startswith("ckpt:{") and text.endswith("}:dead"):
        job_id = text[len("ckpt:{") : -len("}:dead")]
        return job_id if is_valid_job_id(job_id) else None
    return None


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
