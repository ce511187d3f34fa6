"""RQ tasks of queue ``sink``; run them with plain ``rq worker sink``."""

from __future__ import annotations

import logging

from scorer_worker.connection import task_connection
from scorer_worker.dispatch import clear_markers, for_each_job
from scorer_worker.routes import Route, process_data, process_settings

from .flush import flush_job
from .writers import writer_from_settings

log = logging.getLogger(__name__)

# The route the shell gives the scorer for what follows a committed state.
FLUSH = Route("sink", "sink.tasks.flush_jobs")


def flush(job_id: str) -> dict:
    """Write one job's latest state to its row (see :func:`flush_jobs`).

    Returns:
        A summary for the RQ job result.
    """
    return flush_jobs([job_id])


def flush_jobs(job_ids: list[str]) -> dict:
    """Write each job's latest state to its ``local_training_jobs`` row, with one writer.

    Returns:
        The outcome per job (written, stale, up-to-date, busy, error).

    Raises:
        PipelineError: when flushing some job raised (after the others were flushed).
    """
    settings = process_settings()
    queue = task_connection(settings)
    redis = process_data(settings, queue)
    clear_markers(queue, FLUSH.queue, job_ids)
    writer = writer_from_settings(settings)
    try:
        results = for_each_job(
            job_ids, lambda job_id: flush_job(redis, job_id, settings, writer), "flush"
        )
    finally:
        writer.close()
    return {job_id: result.outcome for job_id, result in results.items()}
