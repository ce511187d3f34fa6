"""Redis connections for tasks: the worker's own connection, else one from the settings."""

from __future__ import annotations

from typing import Any

import redis
from rq import get_current_job

from .settings import Settings


def connect(settings: Settings) -> redis.Redis:
    """Open a Redis client for ``settings.redis_url`` with health checks and timeouts."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry_on_timeout=True,
    )


def task_connection(settings: Settings) -> Any:
    """Return the connection of the RQ job being executed, or a new one outside a worker."""
    job = get_current_job()
    return job.connection if job is not None else connect(settings)
