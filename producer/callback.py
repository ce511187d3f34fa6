"""CheckpointEventsCallback: a ``transformers.TrainerCallback`` that only publishes events.

It turns the Trainer's hooks into the five wire events of DESIGN section 3 and hands them to
an :class:`EventPublisher`. It scores nothing: scoring happens in the scorer worker, so local
runs and pod runs are scored by the same code. Only the world-process-zero publishes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .publisher import EventPublisher
from .wire import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_SAVED,
    EVAL,
    TRAIN_BEGIN,
    TRAIN_END,
    TRAIN_LOG,
    checkpoint_step,
    is_valid_job_id,
)

MAX_ERROR_CHARS = 2000


def retained_checkpoints(output_dir: str | os.PathLike[str]) -> list[str]:
    """Return the ``checkpoint-N`` folder names present in ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and checkpoint_step(p.name) is not None]
    return sorted(names, key=lambda name: checkpoint_step(name) or 0)


class _StateBeforeTraining:
    """Stands in for ``TrainerState`` when a failure is reported before training started."""

    global_step = 0
    epoch = None

    @property
    def is_world_process_zero(self) -> bool:
        return int(os.environ.get("RANK", "0") or 0) == 0


class CheckpointEventsCallback(TrainerCallback):
    """Publishes train/eval log events of a Trainer run to the job's Redis stream.

    Args:
        job_id: the job; defaults to ``$JOB_ID``.
        redis_url: defaults to ``$REDIS_URL``.
        publisher: an existing publisher (its owner closes it); else one is made on rank zero.
        spool_dir: spool folder for a publisher made here.
        close_timeout_s: how long the end of training may wait to hand events over.

    Raises:
        ValueError: if no valid job id is given or found in ``$JOB_ID``.
    """

    def __init__(
        self,
        job_id: str | None = None,
        redis_url: str | None = None,
        *,
        publisher: EventPublisher | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        close_timeout_s: float = 30.0,
    ) -> None:
        self.job_id = job_id or (publisher.job_id if publisher else os.environ.get("JOB_ID", ""))
        if not is_valid_job_id(self.job_id):
            raise ValueError(f"invalid or missing job id {self.job_id!r} (argument or $JOB_ID)")
        self.redis_url = redis_url
        self.spool_dir = spool_dir
        self.close_timeout_s = close_timeout_s
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._summary: dict[str, Any] = {}
        self._last_state: Any = None

    @property
    def publisher(self) -> EventPublisher:
        """The publisher in use, created on first use."""
        if self._publisher is None:
            self._publisher = EventPublisher(self.job_id, self.redis_url, spool_dir=self.spool_dir)
        return self._publisher

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Publish ``train_begin`` with the run's plan and the step it resumes from."""
        info = {
            "max_steps": state.max_steps,
            "num_train_epochs": args.num_train_epochs,
            "resumed_from_step": state.global_step,
            "save_total_limit": args.save_total_limit,
            "output_dir": str(Path(args.output_dir).resolve()) if args.output_dir else None,
        }
        self._summary = {}
        self._emit(state, TRAIN_BEGIN, info=info)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        """Publish a ``train_log`` for training logs; keep the end-of-run summary for later."""
        logs = logs or {}
        if any(name.startswith("eval_") for name in logs):
            return  # evaluations are published by on_evaluate, with the full metric set
        if "train_runtime" in logs:
            self._summary = {k: v for k, v in logs.items() if k != "epoch"}
            return
        metrics = {k: v for k, v in logs.items() if k not in ("epoch", "step")}
        if metrics:
            self._emit(state, TRAIN_LOG, metrics=metrics)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any
    ) -> None:
        """Publish an ``eval`` event with the ``eval_*`` metrics."""
        metrics = {k: v for k, v in (metrics or {}).items() if k != "epoch"}
        if metrics:
            self._emit(state, EVAL, metrics=metrics)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Publish ``checkpoint_saved`` with the checkpoint folders present after rotation."""
        if not state.is_world_process_zero:
            return
        info = {
            "checkpoint": f"{CHECKPOINT_PREFIX}{state.global_step}",
            "retained": retained_checkpoints(args.output_dir),
        }
        self._emit(state, CHECKPOINT_SAVED, info=info)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Publish ``train_end`` (completed) and hand every event over before returning."""
        self._emit(state, TRAIN_END, metrics=self._summary, info={"status": "completed"})
        self._finish(state)

    def report_failure(self, error: BaseException | str, status: str = "failed") -> None:
        """Publish ``train_end`` with ``status`` (``failed`` or ``cancelled``) and the error.

        Call it from the code that runs ``trainer.train()`` when training raises; the Trainer
        has no hook for exceptions. It also works before training began (e.g. the model failed
        to load): the event then carries step 0, and only rank 0 (``$RANK``) publishes.
        """
        state = self._last_state or _StateBeforeTraining()
        if not state.is_world_process_zero:
            return
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        info = {"status": status, "error": text[:MAX_ERROR_CHARS]}
        self._emit(state, TRAIN_END, info=info)
        self._finish(state)

    def _emit(self, state: Any, kind: str, metrics: dict | None = None, info: dict | None = None):
        self._last_state = state
        if state.is_world_process_zero:
            self.publisher.emit(kind, state.global_step, state.epoch, metrics, info)

    def _finish(self, state: Any) -> None:
        if not state.is_world_process_zero or self._publisher is None:
            return
        if self._owns_publisher:
            self._publisher.close(self.close_timeout_s)
            self._publisher = None
        else:
            self._publisher.flush(self.close_timeout_s)
