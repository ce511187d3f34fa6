"""Enqueueing work for a job, at most one waiting task per job and queue.

A marker key with a TTL is set (SET NX) before a task is enqueued and deleted by the task when
it starts, so events that arrive while a task runs cause exactly one more task. If a task is
lost (worker killed, queue flushed), the marker expires and the pump enqueues again: the
tasks themselves are idempotent, so a duplicate costs only time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from rq import Queue

from . import keys
from .errors import PipelineError
from .settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def enqueue_many(
    redis: Any, queue_name: str, task: str, job_ids: list[str], settings: Settings
) -> int:
    """Enqueue ``task(chunk)`` for the jobs that have no waiting task, in chunks.

    One task per ``settings.dispatch_batch_jobs`` jobs keeps RQ's per-task cost (a job hash,
    registries, a dequeue) off the per-job path when thousands of jobs are live.

    Returns:
        How many jobs got a task.
    """
    if not job_ids:
        return 0
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.set(keys.queued(job_id, queue_name), "1", nx=True, ex=settings.queued_marker_ttl_s)
    claimed = [job for job, ok in zip(job_ids, pipe.execute(), strict=True) if ok]
    queue = Queue(queue_name, connection=redis)
    size = max(1, settings.dispatch_batch_jobs)
    for start in range(0, len(claimed), size):
        chunk = claimed[start : start + size]
        queue.enqueue(
            task,
            chunk,
            job_timeout=settings.task_timeout_s,
            result_ttl=0,
            failure_ttl=24 * 3600,
            description=f"{task}({len(chunk)} jobs: {chunk[0]}...)",
        )
    return len(claimed)


def clear_markers(redis: Any, queue_name: str, job_ids: list[str]) -> None:
    """Called by a task as it starts: later work for these jobs needs a new task."""
    if job_ids:
        redis.delete(*(keys.queued(job_id, queue_name) for job_id in job_ids))


def for_each_job(job_ids: list[str], work: Callable[[str], T], what: str) -> dict[str, T]:
    """Run ``work(job_id)`` for every job; one job's failure does not stop the others.

    This is the worker boundary: any exception is logged and collected.

    Returns:
        The results of the jobs that succeeded.

    Raises:
        PipelineError: after all jobs ran, when some of them raised (RQ records the failure).
    """
    results: dict[str, T] = {}
    failed: dict[str, str] = {}
    for job_id in job_ids:
        try:
            results[job_id] = work(job_id)
        except Exception as exc:  # decided here: record it, the pump enqueues the job again
            log.exception("%s of %s failed", what, job_id)
            failed[job_id] = f"{type(exc).__name__}: {exc}"
    if failed:
        raise PipelineError(f"{len(failed)} of {len(job_ids)} {what}s failed: {failed}")
    return results
