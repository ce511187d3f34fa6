"""RQ tasks of queue ``scoring``; run them with plain ``rq worker scoring``."""

from __future__ import annotations

import logging
import time
from typing import Any

from . import keys
from .bulk import drain_many
from .coalescing import flush_due
from .connection import task_connection
from .dispatch import clear_markers, enqueue_many, for_each_job
from .drain import DrainResult, drain_job
from .levels import Levels, read_levels
from .routes import process_data, process_flush_route, process_settings
from .settings import Settings

log = logging.getLogger(__name__)


def drain(job_id: str) -> dict:
    """Drain one job's stream into its state (see :func:`drain_jobs`).

    Returns:
        A summary for the RQ job result.
    """
    return drain_jobs([job_id])


def drain_jobs(job_ids: list[str]) -> dict:
    """Drain each job's stream into its state, then ask the sink to write the changed rows.

    The jobs share one time budget (``drain_budget_s``); a job not caught up by then gets a
    new task. A job that fails does not stop the others: the task fails at the end, and the
    pump enqueues that job again (its marker was cleared).

    Returns:
        A summary (jobs, events, dead letters) for the RQ job result.

    Raises:
        PipelineError: when draining some job raised (after the others were drained).
    """
    settings = process_settings()
    queue = task_connection(settings)
    redis = process_data(settings, queue)
    clear_markers(queue, keys.SCORING_QUEUE, job_ids)
    deadline = time.monotonic() + settings.drain_budget_s
    results: dict[str, DrainResult] = {}  # kept even if some job fails

    def drain_one(job_id: str) -> DrainResult:
        results[job_id] = drain_job(redis, job_id, settings, deadline=deadline)
        return results[job_id]

    bulk = None
    try:
        # Most jobs take the pipelined path; the rest (resumes, dead letters...) one by one.
        bulk = drain_many(redis, job_ids, settings, deadline)
        results.update(bulk.results)

        def drain_rest(job_id: str) -> DrainResult:
            if job_id in bulk.failed:
                raise bulk.failed[job_id]  # reported at this boundary like drain_job's own
            return drain_one(job_id)

        for_each_job([*bulk.left, *bulk.failed], drain_rest, "drain")
    finally:  # even when some job failed, the others' flushes and follow-ups are asked for
        known = bulk.levels if bulk is not None else {}
        others = [j for j in results if j not in known]
        _request_flushes(queue, redis, known, others, settings)
        behind = [j for j, r in results.items() if not r.caught_up]
        enqueue_many(queue, keys.SCORING_QUEUE, keys.DRAIN_JOBS_TASK, behind, settings)
    events = sum(r.events for r in results.values())
    return {"jobs": len(job_ids), "events": events, "behind": len(behind)}


def _request_flushes(
    queue: Any, redis: Any, known: dict[str, Levels], others: list[str], settings: Settings
) -> None:
    # Workers are trusted processes; enqueueing here saves the sink a pump interval. The
    # pipelined drain already knows its jobs' levels; the others are read.
    levels = {**known, **dict(zip(others, read_levels(redis, others), strict=True))}
    now = time.time()
    due = [j for j, level in levels.items() if flush_due(level, now, settings.flush_min_interval_s)]
    ordered = sorted(due, key=lambda job_id: not levels[job_id].eval_changed)  # evals first
    flush = process_flush_route()
    if flush is not None:  # else the pump asks for them on its next pass
        enqueue_many(queue, flush.queue, flush.task, ordered, settings)
