"""CheckpointEventsCallback: a ``transformers.TrainerCallback`` that publishes events.

It turns the Trainer's hooks into the five wire events of DESIGN section 3 and hands them to
an :class:`EventPublisher`. It scores nothing: scoring happens in the scorer worker, so local
runs and pod runs are scored by the same code. Only the world-process-zero publishes.

With ``follow_scorer`` on it also closes the loop (DESIGN section 2): each evaluation waits,
bounded, for the scorer's decision covering it and hands the score to Hugging Face as the
metric ``eval_checkpoint_score``, so that ``metric_for_best_model="checkpoint_score"`` makes
rotation, ``load_best_model_at_end`` and ``EarlyStoppingCallback`` follow the composite score.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .folders import retained_checkpoints
from .publisher import EventPublisher
from .wire import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_SAVED,
    EVAL,
    TRAIN_BEGIN,
    TRAIN_END,
    TRAIN_LOG,
    decision_field,
    decision_key,
    decode_decision_entry,
    is_valid_job_id,
)

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 2000
SCORE_METRIC = "eval_checkpoint_score"
"""The metric the scorer's score is handed to Hugging Face as; use
``metric_for_best_model="checkpoint_score"`` with ``greater_is_better=False``."""
NO_DECISION = math.inf
"""What an evaluation gets when its decision did not arrive in time: never Hugging Face's best."""

# The decision usually lands within tens of milliseconds, and the training thread waits for
# it: poll often (an HMGET costs Redis microseconds), at most every 5 ms, so a decision is
# read within 5 ms of its commit.
FIRST_POLL_S = 0.002
MAX_POLL_S = 0.005
# Short, so that a Redis that hangs (rather than refuses) costs the evaluation little.
DECISION_SOCKET_TIMEOUT_S = 0.5
_NOT_METRICS = ("epoch", SCORE_METRIC)


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
        redis_url: defaults to ``$CKPT_DATA_REDIS_URL``, then ``$REDIS_URL``.
        publisher: an existing publisher (its owner closes it); else one is made on rank zero.
        spool_dir: spool folder for a publisher made here.
        close_timeout_s: how long the end of training may wait to hand events over.
        follow_scorer: close the loop: every evaluation during training waits for the
            scorer's decision covering it and gets its score as ``eval_checkpoint_score``
            (``+inf`` when none arrived in time). Off by default: then nothing waits.
        decision_timeout_s: the longest an evaluation waits for its decision. No wait at all
            while the publisher finds Redis unreachable.

    Raises:
        ValueError: if no valid job id is given or found in ``$JOB_ID``, or
            ``decision_timeout_s`` is negative or not finite.
    """

    def __init__(
        self,
        job_id: str | None = None,
        redis_url: str | None = None,
        *,
        publisher: EventPublisher | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
        close_timeout_s: float = 30.0,
        follow_scorer: bool = False,
        decision_timeout_s: float = 10.0,
    ) -> None:
        self.job_id = job_id or (publisher.job_id if publisher else os.environ.get("JOB_ID", ""))
        if not is_valid_job_id(self.job_id):
            raise ValueError(f"invalid or missing job id {self.job_id!r} (argument or $JOB_ID)")
        if not (math.isfinite(decision_timeout_s) and decision_timeout_s >= 0):
            raise ValueError(f"decision_timeout_s must be >= 0, got {decision_timeout_s!r}")
        self.follow_scorer = bool(follow_scorer)
        self.decision_timeout_s = float(decision_timeout_s)
        self.redis_url = redis_url
        self.spool_dir = spool_dir
        self.close_timeout_s = close_timeout_s
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._summary: dict[str, Any] = {}
        self._last_state: Any = None
        self._training = False
        # The last evaluation handed a score: (what identifies it, the score), so that the
        # on_log and on_evaluate of one evaluation publish once and agree.
        self._covered: tuple[tuple, float] | None = None
        self._reader: Any = None
        self._owns_reader = False
        self._warned_no_decision = False

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
        self._training = True
        self._covered = None
        self._warned_no_decision = False
        self._emit(state, TRAIN_BEGIN, info=info)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        """Publish a ``train_log`` for training logs; keep the end-of-run summary for later.

        With ``follow_scorer`` on, an evaluation's logs are where its score is handed over:
        ``Trainer.evaluate`` passes the very dict it returns as the evaluation's metrics to
        ``on_log`` before any callback's ``on_evaluate`` (``EarlyStoppingCallback`` reads the
        metric there) and before it picks its best, so the score is in place wherever this
        callback stands in ``callbacks=[...]``.
        """
        logs = logs if logs is not None else {}
        if any(name.startswith("eval_") for name in logs):
            if self.follow_scorer and self._training:
                self._follow(state, logs)
            return  # otherwise evaluations are published by on_evaluate
        if "train_runtime" in logs:
            self._summary = {k: v for k, v in logs.items() if k != "epoch"}
            return
        metrics = {k: v for k, v in logs.items() if k not in ("epoch", "step")}
        if metrics:
            self._emit(state, TRAIN_LOG, metrics=metrics)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any
    ) -> None:
        """Publish an ``eval`` event with the ``eval_*`` metrics.

        With ``follow_scorer`` on during training, the evaluation was normally published and
        scored in ``on_log`` already; this only makes sure ``metrics`` hold the score (for a
        Trainer whose ``log`` passes a copy, or that does not log evaluations).
        """
        if metrics is not None and self.follow_scorer and self._training:
            self._follow(state, metrics)
            return
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
        # Evaluations after training (trainer.evaluate()) drive no rotation, best model or
        # early stop, so they are published without waiting for a decision.
        self._training = False
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

    def _follow(self, state: Any, metrics: dict) -> None:
        """Make sure this evaluation is published once and ``metrics`` hold its score."""
        identity = (state.global_step, _identity(metrics))
        if self._covered is not None and self._covered[0] == identity:
            score = self._covered[1]  # the same evaluation seen again: already published
        else:
            score = self._decide(state, metrics)
            self._covered = (identity, score)
        metrics[SCORE_METRIC] = score
        _record_in_history(state, metrics, score)

    def _decide(self, state: Any, metrics: dict) -> float:
        """Publish the evaluation (rank zero) and return its score, the same on every rank."""
        score = NO_DECISION
        if state.is_world_process_zero:
            try:
                score = self._publish_and_wait(state, metrics)
            except Exception:  # never hurt training, and never leave the other ranks waiting
                log.exception("follow_scorer: reading the decision failed")
        group = _process_group()
        if group is not None:
            # Every rank must hand Hugging Face the same value, or their best models and
            # early stops would disagree; only rank zero has read it.
            box = [score]
            group.broadcast_object_list(box, src=0)
            score = box[0]
        return score

    def _publish_and_wait(self, state: Any, metrics: dict) -> float:
        """Publish the evaluation and wait (bounded) for its score; +inf when none came."""
        step = state.global_step
        # Checked before publishing, so that it reflects the sends so far rather than a race
        # with the thread sending this very event.
        unreachable = self.publisher.redis_unreachable
        published = {k: v for k, v in metrics.items() if k not in _NOT_METRICS}
        self._emit(state, EVAL, metrics=published)
        if unreachable:
            found, reason = None, "Redis unreachable (events go to the spool)"
        else:
            found, reason = self._await_decision(step, metrics.get("eval_loss"))
        if found is None:
            self._report_no_decision(step, reason)
            return NO_DECISION
        return found

    def _await_decision(self, step: int, eval_loss: Any) -> tuple[float | None, str]:
        """Poll the decision until it scores this evaluation; return (score, why not)."""
        try:
            reader = self._decision_reader()
            key, field = decision_key(self.job_id), decision_field(step)
        except Exception as exc:  # training is never hurt: no decision, no exception
            return None, f"decision not readable ({type(exc).__name__})"
        wanted = _loss_key(eval_loss)
        deadline = time.monotonic() + self.decision_timeout_s
        pause = FIRST_POLL_S
        while True:
            try:
                (raw,) = reader.hmget(key, [field])
            except Exception as exc:
                return None, f"Redis unreachable ({type(exc).__name__})"
            if raw is not None:
                try:
                    score, loss = decode_decision_entry(raw)
                except ValueError:
                    pass  # not this contract's value: wait for one that is
                else:
                    # A score for another evaluation of this step (an earlier attempt of a
                    # resumed run) is not this evaluation's: wait for the one that is.
                    if _loss_key(loss) == wanted:
                        return score, ""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None, f"no decision within {self.decision_timeout_s:g}s"
            if self.publisher.redis_unreachable:
                return None, "Redis unreachable (the evaluation went to the spool)"
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_POLL_S)

    def _decision_reader(self) -> Any:
        """The Redis client that reads the decision: the publisher's if it was given one."""
        if self._reader is None:
            injected = self.publisher.injected_client
            if injected is not None:
                self._reader = injected
            else:
                import redis  # imported here, as in the publisher: events need no redis
                from redis.backoff import NoBackoff
                from redis.retry import Retry

                from .clients import open_redis  # a cluster client on a cluster node

                timeout = min(DECISION_SOCKET_TIMEOUT_S, max(self.decision_timeout_s, 0.05))
                self._reader = open_redis(
                    self.publisher.redis_url,
                    socket_timeout=timeout,
                    socket_connect_timeout=timeout,
                    # One immediate retry on a connection error: a pooled connection may be
                    # stale after a restart. None on a timeout: a hung Redis costs one timeout.
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                )
                self._owns_reader = True
        return self._reader

    def _report_no_decision(self, step: int, reason: str) -> None:
        if not self._warned_no_decision:
            self._warned_no_decision = True
            log.warning(
                "follow_scorer: evaluations without a decision get %s=+inf, so Hugging Face "
                "never picks them (the row still picks from the scorer once the events "
                "arrive); first at step %d: %s",
                SCORE_METRIC,
                step,
                reason,
            )
        log.info("follow_scorer: evaluation at step %d got %s=+inf: %s", step, SCORE_METRIC, reason)

    def _finish(self, state: Any) -> None:
        if self._reader is not None:
            if self._owns_reader:
                self._reader.close()
            self._reader, self._owns_reader = None, False
        if not state.is_world_process_zero or self._publisher is None:
            return
        if self._owns_publisher:
            self._publisher.close(self.close_timeout_s)
            self._publisher = None
        else:
            self._publisher.flush(self.close_timeout_s)


def _loss_key(value: Any) -> str | None:
    """Compare eval losses as the wire carries them: by repr, NaN and missing alike."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else repr(number)


def _identity(metrics: dict) -> tuple:
    """What tells one evaluation's metrics from another's (runtimes differ between any two)."""
    return tuple(sorted((k, repr(v)) for k, v in metrics.items() if k not in _NOT_METRICS))


def _record_in_history(state: Any, metrics: dict, score: float) -> None:
    """Add the score to the log_history entry of this evaluation, for trainer_state.json.

    ``Trainer.log`` appends a copy of the logs (plus ``step``) before calling ``on_log``.
    """
    history = getattr(state, "log_history", None)
    if not history or not isinstance(history[-1], dict):
        return
    entry = history[-1]
    if entry.get("step") != state.global_step:
        return
    missing = object()
    for name, value in metrics.items():
        if name != SCORE_METRIC and entry.get(name, missing) is not value:
            return
    entry[SCORE_METRIC] = score


def _process_group() -> Any:
    """``torch.distributed`` when it runs several processes, else None.

    Looked up in ``sys.modules`` rather than imported: without torch loaded there is no
    process group, and the producer must import without torch.
    """
    torch = sys.modules.get("torch")
    dist = getattr(torch, "distributed", None)
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    return dist if dist.get_world_size() > 1 else None
