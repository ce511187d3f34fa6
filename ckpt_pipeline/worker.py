"""The RQ worker class the Procfile runs: tasks in the worker process, modules loaded once.

RQ's default worker forks a child per task, and the child imports the task's module (the
sink's writers, psycopg, the Supabase client) before it runs: 0.1 to 0.3 s per task, longer
than the task itself. The pipeline's tasks are short and idempotent, so they run in the
worker process (``SimpleWorker``), whose job timeout still applies (a signal), with their
modules imported when the worker starts.
"""

from __future__ import annotations

import gc
from typing import Any

from rq.worker import SimpleWorker

# A drain holds thousands of decoded events at once, none of them in reference cycles. With
# CPython's default threshold (700) the collector runs every few hundred allocations and its
# older generations traverse every live event again: a quarter of a large drain's time.
GC_THRESHOLDS = (50_000, 20, 10)


def tune_gc() -> None:
    """Freeze what is loaded so far (modules) out of collection and collect less often.

    For long-running pipeline processes, called once after their imports. Cycles are still
    collected: only the cadence changes.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class PipelineWorker(SimpleWorker):
    """``SimpleWorker`` that composes the pipeline once at start, then tunes the GC.

    It imports both queues' task modules (loaded once, not on the first task), builds the
    settings once from the environment, and hands the tasks those settings and the sink's
    flush route (the scorer asks for flushes through it without importing the sink).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import scorer_worker.tasks  # noqa: F401
        from scorer_worker.routes import configure_process
        from scorer_worker.settings import Settings
        from sink.tasks import FLUSH

        configure_process(Settings.from_env(), FLUSH)
        super().__init__(*args, **kwargs)
        tune_gc()
