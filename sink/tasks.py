"""RQ tasks of queue ``sink``; run them with plain ``rq worker sink``."""

from __future__ import annotations

import logging

from scorer_worker import keys
from scorer_worker.connection import task_connection
from scorer_worker.dispatch import clear_marker
from scorer_worker.settings import Settings

from .flush import flush_job

log = logging.getLogger(__name__)


def flush(job_id: str) -> dict:
    """Write ``job_id``'s latest state to its ``local_training_jobs`` row.

    Returns:
        A summary (outcome, version, metric rows) for the RQ job result.
    """
    settings = Settings.from_env()
    redis = task_connection(settings)
    clear_marker(redis, keys.SINK_QUEUE, job_id)
    result = flush_job(redis, job_id, settings)
    log.info("flushed %s: %s (version %d)", job_id, result.outcome, result.version)
    return result.__dict__
