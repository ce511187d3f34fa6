"""Fault-injection probes, loaded only by the chaos experiments' pipeline processes.

The experiments put this folder first on PYTHONPATH, so Python imports this module at start-up
in ``ckpt-pipeline pump`` and ``rq worker`` (and the work-horses RQ forks inherit it). It
changes no behaviour of the pipeline; it marks phases so a kill can be aimed at them:

Marks are files ``<pid>.<phase>`` in ``CKPT_CHAOS_PROBE_DIR``, named after the worker process
in the phase: the ``rq worker`` itself when it runs tasks in-process (the Procfile's
``PipelineWorker``), or the parent of a forked work-horse. Both pids are marked; the harness
only acts on the pids of the workers it started:

* ``CKPT_CHAOS_PROBE_DIR``: after a successful state commit (one job's, or a pipelined
  batch of jobs'), a fraction
  (``CKPT_CHAOS_POST_COMMIT_P``) of drains create ``<pid>.post-commit`` and linger
  ``CKPT_CHAOS_POST_COMMIT_S`` seconds before going on to ask for the sink flush: a kill then
  lands between the state commit and the flush. Every PostgreSQL write creates
  ``<pid>.flush`` for as long as it runs: a kill then lands inside the sink's transaction.
  A fraction (``CKPT_CHAOS_TASK_START_P``) of tasks create ``<pid>.task-start`` and linger
  before they clear their queued marker: a kill then lands after the worker took the task
  from the queue and before the task started, the window in which a dead worker holds it.
* ``CKPT_CHAOS_TASK_LOG_DIR``: every RQ task enqueued (once Redis acknowledged it) and every
  task started is appended to ``<pid>.tasks.jsonl`` there (time, queue, RQ id, the jobs it
  covers), so an experiment can count tasks a failover lost or ran twice.
* ``CKPT_CHAOS_POISON``: an ``eval`` event whose metrics hold ``chaos_poison`` makes scoring
  raise (a stand-in for a scoring bug), to exercise poison-event handling.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path

# Work-horses are forked from one parent: the module RNG would repeat itself in each of them.
_RNG = random.SystemRandom()


@contextlib.contextmanager
def _marked(folder: Path, phase: str) -> Iterator[None]:
    marks = [folder / f"{pid}.{phase}" for pid in {os.getpid(), os.getppid()}]
    for mark in marks:
        mark.touch()
    try:
        yield
    finally:
        for mark in marks:
            mark.unlink(missing_ok=True)


def _install_probes(folder: Path) -> None:
    import scorer_worker.commit
    from sink.writers.postgres import PostgresWriter

    fraction = float(os.environ.get("CKPT_CHAOS_POST_COMMIT_P", "0.3"))
    linger = float(os.environ.get("CKPT_CHAOS_POST_COMMIT_S", "0.3"))
    commit_all, write = scorer_worker.commit.commit_all, PostgresWriter.write

    def probed_commit_all(*args, **kwargs):  # both drains commit through it
        written = commit_all(*args, **kwargs)
        if _RNG.random() < fraction:
            with _marked(folder, "post-commit"):
                time.sleep(linger)
        return written

    def probed_write(self, *args, **kwargs):
        with _marked(folder, "flush"):
            return write(self, *args, **kwargs)

    scorer_worker.commit.commit_all = probed_commit_all
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
                with _marked(folder, "task-start"):
                    time.sleep(linger)
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


def _install_task_log(folder: Path) -> None:
    """Log every task enqueued (after Redis acknowledged it) and every task started."""
    import json

    from rq.job import Job
    from rq.queue import Queue

    enqueue, perform = Queue.enqueue, Job.perform

    def note(what: str, queue: str, task: str, args: tuple) -> None:
        jobs = args[0] if args and isinstance(args[0], list) else []
        line = {"at": time.time(), "what": what, "queue": queue, "task": task, "jobs": jobs}
        # One short append per record: O_APPEND keeps lines whole between processes.
        with open(folder / f"{os.getpid()}.tasks.jsonl", "a") as log:
            log.write(json.dumps(line) + "\n")

    def logged_enqueue(self, f, *args, **kwargs):
        job = enqueue(self, f, *args, **kwargs)
        note("enqueue", self.name, job.id, args)
        return job

    def logged_perform(self):
        note("start", self.origin, self.id, tuple(self.args))
        return perform(self)

    Queue.enqueue = logged_enqueue
    Job.perform = logged_perform


if os.environ.get("CKPT_CHAOS_TASK_LOG_DIR"):
    _install_task_log(Path(os.environ["CKPT_CHAOS_TASK_LOG_DIR"]))
if os.environ.get("CKPT_CHAOS_PROBE_DIR"):
    _install_probes(Path(os.environ["CKPT_CHAOS_PROBE_DIR"]))
if os.environ.get("CKPT_CHAOS_POISON"):
    _install_poison()
