"""The RQ worker class the Procfile runs: tasks in the worker process, modules loaded once.

RQ's default worker forks a child per task, and the child imports the task's module (the
sink's writers, psycopg, the Supabase client) before it runs: 0.1 to 0.3 s per task, longer
than the task itself. The pipeline's tasks are short and idempotent, so they run in the
worker process (``SimpleWorker``), whose job timeout still applies (a signal), with their
modules imported when the worker starts.
"""

from __future__ import annotations

from typing import Any

from rq.worker import SimpleWorker


class PipelineWorker(SimpleWorker):
    """``SimpleWorker`` that imports both queues' task modules at start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import scorer_worker.tasks  # noqa: F401  (loaded once, not on the first task)
        import sink.tasks  # noqa: F401

        super().__init__(*args, **kwargs)
