"""Fault-injection probes, loaded only by the chaos experiments' pipeline processes.

The experiments put this folder first on PYTHONPATH, so Python imports this module at start-up
in ``ckpt-pipeline pump`` and ``rq worker`` (and the work-horses RQ forks inherit it). It
changes no behaviour of the pipeline; it marks phases so a kill can be aimed at them:

Marks are files ``<pid>.<phase>`` in ``CKPT_CHAOS_PROBE_DIR``, named after the worker process
whose work-horse (its child) is in the phase:

* ``CKPT_CHAOS_PROBE_DIR``: after a successful state commit, a fraction
  (``CKPT_CHAOS_POST_COMMIT_P``) of drains create ``<pid>.post-commit`` and linger
  ``CKPT_CHAOS_POST_COMMIT_S`` seconds before going on to ask for the sink flush: a kill then
  lands between the state commit and the flush. Every PostgreSQL write creates
  ``<pid>.flush`` for as long as it runs: a kill then lands inside the sink's transaction.
  A fraction (``CKPT_CHAOS_TASK_START_P``) of tasks create ``<pid>.task-start`` and linger
  before they clear their queued marker: a kill then lands after the worker took the task
  from the queue and before the task started, the window in which a dead worker holds it.
* ``CKPT_CHAOS_POISON``: an ``eval`` event whose metrics hold ``chaos_poison`` makes scoring
  raise (a stand-in for a scoring bug), to exercise poison-event handling.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

# Work-horses are forked from one parent: the module RNG would repeat itself in each of them.
_RNG = random.SystemRandom()


def _install_probes(folder: Path) -> None:
    from scorer_worker.store import StateTransaction
    from sink.writers.postgres import PostgresWriter

    fraction = float(os.environ.get("CKPT_CHAOS_POST_COMMIT_P", "0.3"))
    linger = float(os.environ.get("CKPT_CHAOS_POST_COMMIT_S", "0.3"))
    commit, write = StateTransaction.commit, PostgresWriter.write

    def probed_commit(self, *args, **kwargs):
        commit(self, *args, **kwargs)
        if _RNG.random() < fraction:
            mark = folder / f"{os.getppid()}.post-commit"
            mark.touch()
            try:
                time.sleep(linger)
            finally:
                mark.unlink(missing_ok=True)

    def probed_write(self, *args, **kwargs):
        mark = folder / f"{os.getppid()}.flush"
        mark.touch()
        try:
            return write(self, *args, **kwargs)
        finally:
            mark.unlink(missing_ok=True)

    StateTransaction.commit = probed_commit
    PostgresWriter.write = probed_write
    _probe_task_start(folder, linger)


def _probe_task_start(folder: Path, linger: float) -> None:
    import scorer_worker.tasks
    import sink.tasks

    fraction = float(os.environ.get("CKPT_CHAOS_TASK_START_P", "0.1"))
    for module in (scorer_worker.tasks, sink.tasks):
        clear = module.clear_markers

        def probed_clear(*args, _clear=clear, **kwargs):
            if _RNG.random() < fraction:
                mark = folder / f"{os.getppid()}.task-start"
                mark.touch()
                try:
                    time.sleep(linger)
                finally:
                    mark.unlink(missing_ok=True)
            return _clear(*args, **kwargs)

        module.clear_markers = probed_clear


def _install_poison() -> None:
    from scorer_worker import state

    apply_eval = state._APPLY["eval"]

    def poisoned(job_state, event):
        if "chaos_poison" in event.metrics:
            raise ArithmeticError(f"chaos poison at step {event.step}")
        return apply_eval(job_state, event)

    state._APPLY["eval"] = poisoned


if os.environ.get("CKPT_CHAOS_PROBE_DIR"):
    _install_probes(Path(os.environ["CKPT_CHAOS_PROBE_DIR"]))
if os.environ.get("CKPT_CHAOS_POISON"):
    _install_poison()
