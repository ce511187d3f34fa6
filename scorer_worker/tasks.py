"""RQ tasks of queue ``scoring``; run them with plain ``rq worker scoring``."""

from __future__ import annotations

import logging

from . import keys
from .connection import task_connection
from .dispatch import clear_marker, enqueue_once
from .drain import drain_job
from .settings import Settings

log = logging.getLogger(__name__)


def drain(job_id: str) -> dict:
    """Drain ``job_id``'s stream into its state, then ask the sink to write the row.

    Returns:
        A summary (events, dead letters, commits, version) for the RQ job result.
    """
    settings = Settings.from_env()
    redis = task_connection(settings)
    clear_marker(redis, keys.SCORING_QUEUE, job_id)
    result = drain_job(redis, job_id, settings)
    written = int(redis.hget(keys.meta(job_id), "written_version") or 0)
    if result.version > written:
        # Workers are trusted processes; enqueueing here saves the sink a pump interval.
        enqueue_once(redis, keys.SINK_QUEUE, keys.FLUSH_TASK, job_id, settings)
    if not result.caught_up:
        enqueue_once(redis, keys.SCORING_QUEUE, keys.DRAIN_TASK, job_id, settings)
    log.info(
        "drained %s: %d events, %d dead, version %d",
        job_id,
        result.events,
        result.dead,
        result.version,
    )
    return result.__dict__
