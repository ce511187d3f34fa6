"""The scoring policy reproduces DESIGN section 4's reference table to 1e-6."""

from __future__ import annotations

import math

import pytest

from scorer_worker.errors import ConfigError
from scorer_worker.scoring import DEFAULT_PROFILE, EVAL_LOSS_ONLY_PROFILE, get_profile, score_eval


@pytest.mark.parametrize(
    ("eval_loss", "train_loss", "ewi", "expected"),
    [(0.5, 0.45, 0, 0.188244), (0.4, 0.1, 1, 0.432459), (0.5, None, 0, 0.158244)],
)
def test_reference_rows(eval_loss, train_loss, ewi, expected):
    assert score_eval(eval_loss, train_loss, ewi).value == pytest.approx(expected, abs=1e-6)


def test_reference_sequence_values():
    evals = [2.5, 1.2, 0.8, 0.75, 0.9]
    trains = [2.8, 1.1, 0.75, 0.3, 0.1]
    ewis = [0, 0, 0, 0, 1]
    expected = [1.246912, 0.541601, 0.329878, 0.465585, 0.728965]
    scores = [score_eval(e, t, w).value for e, t, w in zip(evals, trains, ewis, strict=True)]
    assert scores == pytest.approx(expected, abs=1e-6)
    assert scores.index(min(scores)) == 2


def test_breakdown_adds_up_and_names_profile():
    result = score_eval(0.5, 0.45, 0)
    b = result.breakdown
    total = b["eval_loss_term"] + b["gap_term"] + b["perplexity_term"] - b["improvement_bonus"]
    assert total == pytest.approx(result.value)
    assert (b["profile"], b["profile_version"]) == ("default", 1)
    assert b["diverged"] is False


@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf, -0.1])
def test_unusable_eval_loss_scores_infinity(bad):
    result = score_eval(bad, 0.5, 0)
    assert result.value == math.inf
    assert result.breakdown["diverged"] is True


def test_non_finite_train_loss_is_divergence():
    assert score_eval(0.5, math.nan, 0).value == math.inf


def test_zero_train_loss_is_a_loss_not_missing():
    with_zero = score_eval(0.5, 0.0, 0).value
    without = score_eval(0.5, None, 0).value
    assert with_zero == pytest.approx(without + 0.3)


def test_huge_eval_loss_does_not_overflow():
    result = score_eval(1e6, 1e6, 3)
    assert math.isfinite(result.value)
    assert result.breakdown["perplexity_term"] == pytest.approx(0.1)


def test_zero_eval_loss_uses_the_floor_divisor():
    assert score_eval(0.0, 0.001, 0).breakdown["gap_term"] == pytest.approx(0.3)


def test_eval_loss_only_profile_is_the_eval_loss():
    assert score_eval(0.7, 0.1, 0, EVAL_LOSS_ONLY_PROFILE).value == pytest.approx(0.7)


def test_profiles_by_name():
    assert get_profile("default") is DEFAULT_PROFILE
    with pytest.raises(ConfigError, match="unknown scoring profile"):
        get_profile("nope")
