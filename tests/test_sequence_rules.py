"""Sequence rules of DESIGN section 4: pairing, improvement, eligibility, divergence, resume."""

from __future__ import annotations

import math

import pytest

from scorer_worker.ranking import decide
from scorer_worker.scoring import score_eval
from scorer_worker.state import JobState

from .helpers import begin, end, evaluation, fold, saved, train


def reference_run() -> list:
    evals = [2.5, 1.2, 0.8, 0.75, 0.9]
    trains = [2.8, 1.1, 0.75, 0.3, 0.1]
    events = [begin()]
    for i, (e, t) in enumerate(zip(evals, trains, strict=True)):
        step = (i + 1) * 10
        events += [train(step - 1, t), evaluation(step, e)]
    return events


def test_reference_sequence_picks_the_third_eval():
    decision = decide(fold(reference_run()))
    assert [e.epochs_without_improvement for e in decision.evals] == [0, 0, 0, 0, 1]
    assert [round(e.score, 6) for e in decision.evals] == [
        1.246912,
        0.541601,
        0.329878,
        0.465585,
        0.728965,
    ]
    assert decision.best.step == 30
    assert decision.best_by_eval_loss.step == 40  # eval_loss alone picks the overfitted one


def test_paired_train_loss_is_latest_at_or_before_the_eval_step():
    state = fold([train(5, 2.0), train(10, 1.5), train(11, 0.1), evaluation(10, 1.6)])
    assert decide(state).evals[0].train_loss == 1.5


def test_eval_before_any_train_log_has_no_gap_term():
    state = fold([evaluation(10, 0.5), train(11, 0.1)])
    scored = decide(state).evals[0]
    assert scored.train_loss is None
    assert scored.score == pytest.approx(0.158244, abs=1e-6)


def test_zero_train_loss_is_paired():
    scored = decide(fold([train(10, 0.0), evaluation(10, 0.5)])).evals[0]
    assert scored.train_loss == 0.0
    assert scored.breakdown["gap_term"] == pytest.approx(0.3)


def test_epochs_without_improvement_counts_non_improving_evals():
    state = fold(
        [evaluation(10, 1.0), evaluation(20, 1.0), evaluation(30, 1.1), evaluation(40, 0.9)]
    )
    assert [e.epochs_without_improvement for e in decide(state).evals] == [0, 1, 2, 0]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, None])
def test_unusable_eval_loss_is_never_best_and_marks_divergence(bad):
    state = fold([train(9, 1.0), evaluation(10, 1.2), evaluation(20, bad)])
    decision = decide(state)
    assert decision.evals[1].score == math.inf
    assert decision.best.step == 10
    assert decision.diverged


def test_all_evals_unusable_means_no_best():
    assert decide(fold([evaluation(10, math.nan)])).best is None


def test_exact_score_tie_goes_to_lower_step():
    # eval 2 does not improve (ewi 1); eval 3 does not either (ewi 2): no bonus for both, same loss.
    state = fold([evaluation(10, 0.1), evaluation(20, 0.5), evaluation(30, 0.5)])
    evals = decide(state).evals
    assert evals[1].score == evals[2].score
    state_without_first = fold([evaluation(20, 0.5), evaluation(30, 0.5), saved(30, [20, 30])])
    decision = decide(state_without_first)
    assert decision.evals[0].score < decision.evals[1].score  # first has the bonus
    with_first_rotated = fold(
        [evaluation(10, 0.1), evaluation(20, 0.5), evaluation(30, 0.5), saved(30, [20, 30])]
    )
    assert decide(with_first_rotated).best.step == 20


def test_only_retained_checkpoints_are_eligible():
    events = [
        *reference_run(),
        saved(10, [10]),
        saved(20, [10, 20]),
        saved(30, [20, 30]),
        saved(40, [30, 40]),
    ]
    decision = decide(fold(events))
    assert decision.best.step == 30
    assert decision.best.checkpoint == "checkpoint-30"
    rotated = fold([*events, saved(50, [40, 50])])  # checkpoint-30 deleted by rotation
    decision = decide(rotated)
    assert decision.best.step == 40
    assert not next(e for e in decision.evals if e.step == 30).eligible


def test_without_any_checkpoint_all_evals_are_eligible_and_path_is_null():
    decision = decide(fold(reference_run()))
    assert all(e.eligible for e in decision.evals)
    assert decision.best.checkpoint is None


def test_resume_drops_what_the_earlier_attempt_recorded_after_the_resume_step():
    first_attempt = [begin(ts=0), train(10, 1.0, ts=1), evaluation(10, 1.0, ts=1),
                     train(20, 0.2, ts=2), evaluation(20, 0.1, ts=2),
                     end(20, "failed", ts=3)]  # fmt: skip
    second_attempt = [
        begin(ts=10, resumed_from_step=10),
        train(20, 0.8, ts=11),
        evaluation(20, 0.9, ts=11),
    ]
    state = fold(first_attempt + second_attempt)
    assert state.evals[20].eval_loss == 0.9
    assert state.train[20].loss == 0.8
    assert state.evals[10].eval_loss == 1.0  # at or before the resume step: kept
    assert state.end is None  # the failed attempt's end is superseded by the new attempt
    late = fold(second_attempt + first_attempt)  # the old attempt's events arrive late
    assert late.fingerprint() == state.fingerprint()


def test_replayed_and_repeated_events_change_nothing():
    events = reference_run()
    once = fold(events)
    assert fold(events + events).fingerprint() == once.fingerprint()
    for event in events:
        assert not once.apply(event)


def test_latest_timestamp_wins_per_step():
    state = fold([evaluation(10, 1.0, ts=5), evaluation(10, 2.0, ts=1)])
    assert state.evals[10].eval_loss == 1.0


def test_state_json_round_trip_keeps_nan_and_infinity():
    state = fold([*reference_run(), evaluation(60, math.nan), train(61, math.inf), end(61)])
    again = JobState.from_json(state.to_json())
    assert again.fingerprint() == state.fingerprint()
    assert math.isnan(again.evals[60].eval_loss)


def test_score_matches_direct_call():
    decision = decide(fold(reference_run()))
    third = decision.evals[2]
    assert third.score == score_eval(0.8, 0.75, 0).value
