"""Sequence rules: pair each evaluation with its context, score it, pick the best checkpoint.

The rules (DESIGN section 4): the paired train loss is the latest ``train_log`` loss at a
step <= the eval's step; ``epochs_without_improvement`` is 0 for the first eval or one whose
``eval_loss`` is lower than the previous eval's, else the previous value + 1; the best is the
lowest score among evals whose step has a retained checkpoint (all evals while no checkpoint
was saved), ties going to the lower step.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Any

from producer.wire import CHECKPOINT_PREFIX, checkpoint_step

from .scoring import DEFAULT_PROFILE, Profile, is_usable_loss, score_eval
from .state import JobState


@dataclass(frozen=True)
class ScoredEval:
    """One evaluation with its context, score and breakdown."""

    step: int
    epoch: float | None
    eval_loss: float | None
    train_loss: float | None
    epochs_without_improvement: int
    score: float
    breakdown: dict[str, Any]
    eligible: bool
    checkpoint: str | None


@dataclass(frozen=True)
class Decision:
    """The scored evaluations of a job and the picks made from them."""

    evals: list[ScoredEval]
    best: ScoredEval | None
    best_by_eval_loss: ScoredEval | None
    profile: Profile

    @property
    def diverged(self) -> bool:
        """True when the latest evaluation could not be scored (non-finite or missing loss)."""
        return bool(self.evals) and not math.isfinite(self.evals[-1].score)


def decide(state: JobState, profile: Profile = DEFAULT_PROFILE) -> Decision:
    """Score every evaluation of ``state`` and pick the best checkpoint."""
    retained = _retained_steps(state)
    train_steps, train_losses = _train_losses(state)
    scored: list[ScoredEval] = []
    previous: ScoredEval | None = None
    for step in sorted(state.evals):
        record = state.evals[step]
        ewi = _epochs_without_improvement(record.eval_loss, previous)
        train_loss = _paired(train_steps, train_losses, step)
        result = score_eval(record.eval_loss, train_loss, ewi, profile)
        eligible = retained is None or step in retained
        checkpoint = f"{CHECKPOINT_PREFIX}{step}" if retained is not None and eligible else None
        previous = ScoredEval(
            step, record.epoch, record.eval_loss, train_loss, ewi, result.value,
            result.breakdown, eligible, checkpoint,
        )  # fmt: skip
        scored.append(previous)
    return Decision(scored, _best(scored), _best_by_eval_loss(scored), profile)


def _epochs_without_improvement(eval_loss: float | None, previous: ScoredEval | None) -> int:
    if previous is None:
        return 0
    improved = (
        eval_loss is not None
        and previous.eval_loss is not None
        and eval_loss < previous.eval_loss  # NaN compares False: no improvement
    )
    return 0 if improved else previous.epochs_without_improvement + 1


def _retained_steps(state: JobState) -> set[int] | None:
    latest = state.latest_save
    if latest is None:
        return None
    return {step for name in latest.retained if (step := checkpoint_step(name)) is not None}


def _train_losses(state: JobState) -> tuple[list[int], list[float]]:
    steps = sorted(step for step, rec in state.train.items() if rec.loss is not None)
    return steps, [state.train[step].loss for step in steps]


def _paired(steps: list[int], losses: list[float], eval_step: int) -> float | None:
    index = bisect.bisect_right(steps, eval_step)
    return losses[index - 1] if index else None


def _best(scored: list[ScoredEval]) -> ScoredEval | None:
    candidates = [e for e in scored if e.eligible and math.isfinite(e.score)]
    return min(candidates, key=lambda e: (e.score, e.step), default=None)


def _best_by_eval_loss(scored: list[ScoredEval]) -> ScoredEval | None:
    candidates = [e for e in scored if e.eligible and is_usable_loss(e.eval_loss)]
    return min(candidates, key=lambda e: (e.eval_loss, e.step), default=None)
