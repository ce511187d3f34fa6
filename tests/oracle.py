"""An independent oracle of the sequence rules, for tests (DESIGN section 4).

The scorer implements the rules once, as an incremental fold (``scorer_worker.summary``);
this brute-force recomputation from a whole state (pairing by bisection, picks by ``min``)
is what tests compare the fold against, so they can fail.

Sequence rules: pair each evaluation with its context, score it, pick the best checkpoint.

The rules (DESIGN section 4): the paired train loss is the latest ``train_log`` loss at a
step <= the eval's step; ``epochs_without_improvement`` is 0 for the first eval or one whose
``eval_loss`` is lower than the previous eval's, else the previous value + 1; the best is the
lowest score among evals whose step has a retained checkpoint (all evals while no checkpoint
was saved), ties going to the lower step.
"""

from __future__ import annotations

import bisect
import math

from producer.wire import CHECKPOINT_PREFIX
from scorer_worker.ranking import Decision, ScoredEval
from scorer_worker.scoring import (
    DEFAULT_PROFILE,
    Profile,
    epochs_without_improvement,
    is_usable_loss,
    score_eval,
)
from scorer_worker.state import JobState
from scorer_worker.summary import Pick, Summary, retained_steps


def decide(state: JobState, profile: Profile = DEFAULT_PROFILE) -> Decision:
    """Score every evaluation of ``state`` and pick the best checkpoint (state untouched)."""
    retained = _retained_steps(state)
    train_steps, train_losses = _train_losses(state)
    scored: list[ScoredEval] = []
    previous: ScoredEval | None = None
    for ordinal, step in enumerate(sorted(state.evals)):
        record = state.evals[step]
        ewi = epochs_without_improvement(
            record.eval_loss,
            previous.eval_loss if previous else None,
            previous.epochs_without_improvement if previous else None,
        )
        train_loss = _paired(train_steps, train_losses, step)
        result = score_eval(record.eval_loss, train_loss, ewi, profile)
        eligible = retained is None or step in retained
        checkpoint = f"{CHECKPOINT_PREFIX}{step}" if retained is not None and eligible else None
        previous = ScoredEval(
            step, record.epoch, record.eval_loss, train_loss, ewi, result.value,
            result.breakdown, eligible, checkpoint, ordinal,
        )  # fmt: skip
        scored.append(previous)
    return Decision(scored, _best(scored), _best_by_eval_loss(scored), profile)


def summarize(state: JobState, profile: Profile = DEFAULT_PROFILE) -> Summary:
    """Compute the row's aggregates of a fully loaded state from scratch (state untouched)."""
    decision = decide(state, profile)
    latest = state.latest_save
    records = [*state.train.items(), *state.evals.items()]
    epochs = [(step, r.epoch) for step, r in records if r.epoch is not None]
    return Summary(
        first_ts=state.first_ts,
        last_ts=state.last_ts,
        max_step=state.max_step,
        max_train_step=max(state.train, default=None),
        max_eval_step=max(state.evals, default=None),
        epoch_at=max(epochs) if epochs else None,
        latest_train=_latest_train(state),
        last_eval=_pick(decision.evals[-1]) if decision.evals else None,
        previous_eval_loss=decision.evals[-2].eval_loss if len(decision.evals) > 1 else None,
        latest_save=(latest.ts, latest.checkpoint) if latest else None,
        retained=retained_steps(latest.retained) if latest else None,
        best=_pick(decision.best),
        best_by_eval_loss=_pick(decision.best_by_eval_loss),
        eval_count=len(decision.evals),
    )


def _latest_train(state: JobState) -> dict[str, tuple[int, float]]:
    latest = {}
    for name in ("loss", "learning_rate", "grad_norm"):
        steps = [s for s, r in state.train.items() if getattr(r, name) is not None]
        if steps:
            latest[name] = (max(steps), getattr(state.train[max(steps)], name))
    return latest


def _pick(scored: ScoredEval | None) -> Pick | None:
    if scored is None:
        return None
    return Pick(
        scored.step, scored.epoch, scored.eval_loss, scored.train_loss,
        scored.epochs_without_improvement, scored.score, scored.ordinal, scored.breakdown,
    )  # fmt: skip


def _retained_steps(state: JobState) -> set[int] | None:
    latest = state.latest_save
    return None if latest is None else set(retained_steps(latest.retained))


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
