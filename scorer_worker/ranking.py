"""Sequence rules: pair each evaluation with its context, score it, pick the best checkpoint.

The rules (DESIGN section 4): the paired train loss is the latest ``train_log`` loss at a
step <= the eval's step; ``epochs_without_improvement`` is 0 for the first eval or one whose
``eval_loss`` is lower than the previous eval's, else the previous value + 1; the best is the
lowest score among evals whose step has a retained checkpoint (all evals while no checkpoint
was saved), ties going to the lower step.

They are implemented once, by the fold of :class:`~scorer_worker.summary.Summary`; the
functions here replay a whole state through it (:meth:`Summary.rebuild`) and present the
result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from producer.wire import CHECKPOINT_PREFIX

from .scoring import DEFAULT_PROFILE, Profile
from .state import JobState
from .summary import Pick, Summary


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
    ordinal: int = 0  # position among the job's evaluations by step


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
    """Score every evaluation of ``state`` and pick the best checkpoint.

    Like :func:`summarize`, this stores each evaluation's context on its record.
    """
    summary, picks = Summary.rebuild(state, profile)
    retained = None if summary.retained is None else set(summary.retained)
    scored = [_scored(pick, retained) for pick in picks]
    by_step = {e.step: e for e in scored}
    best = by_step[summary.best.step] if summary.best else None
    by_loss = by_step[summary.best_by_eval_loss.step] if summary.best_by_eval_loss else None
    return Decision(scored, best, by_loss, profile)


def summarize(state: JobState, profile: Profile = DEFAULT_PROFILE) -> Summary:
    """Compute the row's aggregates of a fully loaded state from scratch.

    What the drain's incremental :class:`Summary` always equals; it also stores each
    evaluation's context (paired train loss, epochs without improvement) on its record, which
    the incremental path reads when a new checkpoint changes the retained set.
    """
    return Summary.rebuild(state, profile)[0]


def _scored(pick: Pick, retained: set[int] | None) -> ScoredEval:
    eligible = retained is None or pick.step in retained
    checkpoint = f"{CHECKPOINT_PREFIX}{pick.step}" if retained is not None and eligible else None
    return ScoredEval(
        pick.step, pick.epoch, pick.eval_loss, pick.train_loss,
        pick.epochs_without_improvement, pick.score, pick.breakdown or {}, eligible,
        checkpoint, pick.ordinal,
    )  # fmt: skip
