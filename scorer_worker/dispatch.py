"""Enqueueing work for a job, at most one waiting task per job and queue.

A marker key with a TTL is set (SET NX) before a task is enqueued and deleted by the task when
it starts, so events that arrive while a task runs cause exactly one more task. If a task is
lost (worker killed, queue flushed), the marker expires and the pump enqueues again: the
tasks themselves are idempotent, so a duplicate costs only time.
"""

from __future__ import annotations

from typing import Any

from rq import Queue

from . import keys
from .settings import Settings


def enqueue_once(redis: Any, queue_name: str, task: str, job_id: str, settings: Settings) -> bool:
    """Enqueue ``task(job_id)`` on ``queue_name`` unless one is already waiting.

    Returns:
        True when a task was enqueued.
    """
    marker = keys.queued(job_id, queue_name)
    if not redis.set(marker, "1", nx=True, ex=settings.queued_marker_ttl_s):
        return False
    Queue(queue_name, connection=redis).enqueue(
        task,
        job_id,
        job_timeout=settings.task_timeout_s,
        result_ttl=0,
        failure_ttl=24 * 3600,
        description=f"{task}({job_id})",
    )
    return True


def clear_marker(redis: Any, queue_name: str, job_id: str) -> None:
    """Called by a task as it starts: later work for the job needs a new task."""
    redis.delete(keys.queued(job_id, queue_name))
