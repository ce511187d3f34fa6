"""The scoring policy: one score per evaluation, lower is better (DESIGN section 4).

``score = w_loss * eval_loss + w_gap * |train - eval| / max(eval, 0.001)
        + w_ppl * min(exp(eval_loss) / 20, 1) - bonus * (epochs_without_improvement == 0)``

The weights are configuration: a named profile with a version, recorded on the row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

PERPLEXITY_CAP = 20.0
MIN_EVAL_LOSS_DIVISOR = 0.001
_LOG_PERPLEXITY_CAP = math.log(PERPLEXITY_CAP)


@dataclass(frozen=True)
class Profile:
    """Weights of the score; ``version`` changes whenever the weights do."""

    name: str
    version: int
    eval_loss_weight: float
    gap_weight: float
    perplexity_weight: float
    improvement_bonus: float


DEFAULT_PROFILE = Profile("default", 1, 0.5, 0.3, 0.1, 0.1)
EVAL_LOSS_ONLY_PROFILE = Profile("eval_loss_only", 1, 1.0, 0.0, 0.0, 0.0)
PROFILES = {p.name: p for p in (DEFAULT_PROFILE, EVAL_LOSS_ONLY_PROFILE)}


def get_profile(name: str) -> Profile:
    """Return the named scoring profile.

    Raises:
        ConfigError: for an unknown name.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError(f"unknown scoring profile {name!r}; known: {sorted(PROFILES)}") from None


def is_usable_loss(value: float | None) -> bool:
    """Return True for a finite, non-negative loss."""
    return value is not None and math.isfinite(value) and value >= 0


def epochs_without_improvement(
    eval_loss: float | None, previous_loss: float | None, previous_count: int | None
) -> int:
    """Return the count of an evaluation given the previous one's loss and count.

    0 for the first evaluation (``previous_count`` None) or one whose loss is lower than the
    previous loss; else the previous count + 1. Missing or NaN losses never improve.
    """
    if previous_count is None:
        return 0
    improved = eval_loss is not None and previous_loss is not None and eval_loss < previous_loss
    return 0 if improved else previous_count + 1


@dataclass(frozen=True)
class Score:
    """A score and the terms it is made of."""

    value: float
    breakdown: dict[str, Any]


def score_eval(
    eval_loss: float | None,
    train_loss: float | None,
    epochs_without_improvement: int,
    profile: Profile = DEFAULT_PROFILE,
) -> Score:
    """Score one evaluation in its context.

    Args:
        eval_loss: the evaluation's loss; missing, NaN, infinite or negative scores +inf.
        train_loss: the paired training loss, or None before the first one (no gap term).
            A non-finite train loss means the run diverged: the score is +inf.
        epochs_without_improvement: 0 earns the improvement bonus.
        profile: the weights.

    Returns:
        The score (lower is better) with its breakdown.
    """
    context = {
        "eval_loss": eval_loss,
        "train_loss": train_loss,
        "epochs_without_improvement": epochs_without_improvement,
        "profile": profile.name,
        "profile_version": profile.version,
    }
    if not is_usable_loss(eval_loss):
        return _diverged(context, "eval_loss missing, not finite or negative")
    if train_loss is not None and not math.isfinite(train_loss):
        return _diverged(context, "train_loss not finite")
    terms = {
        "eval_loss_term": profile.eval_loss_weight * eval_loss,
        "gap_term": _gap_term(eval_loss, train_loss, profile),
        "perplexity_term": profile.perplexity_weight * _capped_perplexity_ratio(eval_loss),
        "improvement_bonus": profile.improvement_bonus if epochs_without_improvement == 0 else 0.0,
    }
    value = (
        terms["eval_loss_term"]
        + terms["gap_term"]
        + terms["perplexity_term"]
        - terms["improvement_bonus"]
    )
    return Score(value, {**context, **terms, "score": value, "diverged": False})


def _gap_term(eval_loss: float, train_loss: float | None, profile: Profile) -> float:
    if train_loss is None:
        return 0.0
    return profile.gap_weight * abs(train_loss - eval_loss) / max(eval_loss, MIN_EVAL_LOSS_DIVISOR)


def _capped_perplexity_ratio(eval_loss: float) -> float:
    # exp() of a large loss overflows; past log(20) the term is capped at 1 anyway.
    if eval_loss >= _LOG_PERPLEXITY_CAP:
        return 1.0
    return math.exp(eval_loss) / PERPLEXITY_CAP


def _diverged(context: dict[str, Any], reason: str) -> Score:
    return Score(math.inf, {**context, "score": math.inf, "diverged": True, "reason": reason})
