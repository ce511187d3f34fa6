"""The job's decision as its producer reads it: scores by step and the pick (DESIGN section 2).

The decision closes the loop: the job's callback (locally or on a pod, whose Redis user may
only read this key) waits for the score of each evaluation and hands it to Hugging Face as
``eval_checkpoint_score``. It is derived from the state and written by the same atomic commit
that writes the state, so it never disagrees with the row the sink writes from that state.

A commit writes only what it changed: the scores of the evaluations it changed and the header
(version, pick, counts). A commit that rebuilt the whole state replaces the whole decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from producer.wire import (
    CHECKPOINT_PREFIX,
    DECISION_BEST_CHECKPOINT,
    DECISION_BEST_SCORE,
    DECISION_BEST_STEP,
    DECISION_EVALS,
    DECISION_EVALS_SINCE_BEST,
    DECISION_VERSION,
    decision_field,
    encode_decision_entry,
)

from .scoring import get_profile
from .state import JobState
from .summary import Summary, pick_of


@dataclass(frozen=True)
class DecisionWrite:
    """The decision fields one commit writes; ``replace`` drops the stored ones first."""

    fields: dict[str, str]
    replace: bool = False


def decision_basis(summary: Summary | None) -> tuple[Any, ...]:
    """What the decision's header depends on, to tell whether a commit changed the pick."""
    if summary is None:
        return ()
    best = summary.best
    pick = (best.step, best.score, best.ordinal) if best else None
    return (pick, summary.retained is None, summary.eval_count)


def decision_write(state: JobState, basis: tuple[Any, ...], full: bool) -> DecisionWrite | None:
    """Return what a commit of ``state`` writes to the decision, or None when nothing changed.

    Args:
        state: the state about to be committed, with its summary up to date.
        basis: :func:`decision_basis` of the summary as it was read (before the fold).
        full: every record is loaded (a rebuild): the whole decision is rewritten.
    """
    summary = state.summary
    if summary is None:
        return None
    if full:
        steps = list(state.evals)
    else:
        steps = [s for s, r in state.evals.items() if r.changed == state.version]
        if not steps and decision_basis(summary) == basis:
            return None
    fields = _header(state, summary)
    profile = get_profile(state.profile)
    for step in steps:
        pick = pick_of(step, state.evals[step], profile)
        fields[decision_field(step)] = encode_decision_entry(pick.score, pick.eval_loss)
    return DecisionWrite(fields, replace=full)


def _header(state: JobState, summary: Summary) -> dict[str, str]:
    best = summary.best
    has_folder = best is not None and summary.retained is not None
    return {
        DECISION_VERSION: str(state.version),
        DECISION_BEST_STEP: str(best.step) if best else "",
        DECISION_BEST_CHECKPOINT: f"{CHECKPOINT_PREFIX}{best.step}" if has_folder else "",
        DECISION_BEST_SCORE: repr(best.score) if best else "",
        DECISION_EVALS: str(summary.eval_count),
        DECISION_EVALS_SINCE_BEST: str(summary.evals_since_best),
    }
