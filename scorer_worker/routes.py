"""Where the scorer sends work: RQ queues and the dotted task paths RQ imports.

The scorer names only its own task. What follows a committed state (the sink's flush) is
given by the shell that composes the pipeline (``ckpt_pipeline.worker``, the ``pump``
command), so no arrow runs from the scorer up to the sink, not even in a string.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .keys import DRAIN_JOBS_TASK, SCORING_QUEUE
from .settings import Settings


@dataclass(frozen=True)
class Route:
    """An RQ queue and the task enqueued on it (called with a list of job ids)."""

    queue: str
    task: str


DRAIN = Route(SCORING_QUEUE, DRAIN_JOBS_TASK)


class _Process:
    """What a long-running process composed at start and hands to the tasks it runs."""

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.flush: Route | None = None
        self.data: Any = None  # the data side's client, opened by the first task that needs it
        self.data_url = ""


_PROCESS = _Process()


def configure_process(settings: Settings, flush: Route | None) -> None:
    """Set the settings and the flush route of this process's tasks (the worker, once)."""
    _PROCESS.settings, _PROCESS.flush = settings, flush


@contextmanager
def composed(settings: Settings, flush: Route | None) -> Iterator[None]:
    """Run the block as a process configured with ``settings`` and ``flush``, then restore.

    For a worker run inside another program (``ckpt-pipeline work``, the demo, tests).
    """
    before = (_PROCESS.settings, _PROCESS.flush)
    configure_process(settings, flush)
    try:
        yield
    finally:
        _PROCESS.settings, _PROCESS.flush = before


def process_settings() -> Settings:
    """Return the settings this process runs tasks with.

    The worker class builds them once at start (:func:`configure_process`). A process that did
    not (a plain ``rq worker``, a test calling a task) gets them from the environment as it is.
    """
    return _PROCESS.settings if _PROCESS.settings is not None else Settings.from_env()


def process_flush_route() -> Route | None:
    """Return where the drain asks for flushes, or None (then the pump asks, a pass later)."""
    return _PROCESS.flush


def process_data(settings: Settings, queue: Any) -> Any:
    """Return the data side for this process's tasks.

    ``queue`` (the task's own connection) when the sides are one server; else one client per
    process, opened on first use and kept (a cluster client learns the slot map once).
    """
    if not settings.split_sides:
        return queue
    if _PROCESS.data is None or _PROCESS.data_url != settings.data_redis_url:
        from .connection import connect_data

        _PROCESS.data = connect_data(settings, ride_out_outages=True)
        _PROCESS.data_url = settings.data_redis_url
    return _PROCESS.data
