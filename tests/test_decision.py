"""The decision key (``ckpt:{<job>}:decision``): written by the state commit, equal to the
reference decision of the committed state, on both drain paths and after rebuilds."""

from __future__ import annotations

import math
import time

import fakeredis
import pytest

from producer.wire import decision_key, decode_decision_entry
from scorer_worker import keys
from scorer_worker.bulk import drain_many
from scorer_worker.drain import drain_job
from scorer_worker.settings import Settings
from scorer_worker.state import JobState
from scorer_worker.store import compact_state, load_state
from sink.rows import job_row

from .helpers import JOB, begin, end, evaluation, saved, train
from .oracle import decide
from .test_drain_pump_flush import publish, to_wire

# DESIGN section 4's reference run: the third evaluation wins on score, the fifth is never best.
EVAL_LOSSES = (2.5, 1.2, 0.8, 0.75, 0.9)
TRAIN_LOSSES = (2.8, 1.1, 0.75, 0.3, 0.1)
REFERENCE_SCORES = (1.246912, 0.541601, 0.329878, 0.465585, 0.728965)


def reference_run(keep_all: bool = True) -> list:
    """The reference run with a checkpoint per evaluation (all kept, or the last two)."""
    events = [begin(ts=0.0)]
    for i, (eval_loss, train_loss) in enumerate(zip(EVAL_LOSSES, TRAIN_LOSSES, strict=True)):
        step = 10 * (i + 1)
        steps = list(range(10, step + 1, 10))
        events += [train(step, train_loss), evaluation(step, eval_loss)]
        events.append(saved(step, steps if keep_all else steps[-2:]))
    return events


def read_decision(redis, job=JOB) -> dict[str, str]:
    """The decision hash as text."""
    return {k.decode(): v.decode() for k, v in redis.hgetall(decision_key(job)).items()}


def expected_decision(state: JobState) -> dict[str, str]:
    """The decision of ``state`` by the oracle (not the fold), without version."""
    decision = decide(state)
    best = decision.best
    fields = {
        "best_step": str(best.step) if best else "",
        "best_checkpoint": (best.checkpoint or "") if best else "",
        "best_score": repr(best.score) if best else "",
        "evals": str(len(decision.evals)),
        "evals_since_best": str(len(decision.evals) - 1 - best.ordinal if best else 0),
    }
    if best is None:
        fields["evals_since_best"] = str(len(decision.evals))
    for scored in decision.evals:
        loss = "" if scored.eval_loss is None else repr(float(scored.eval_loss))
        fields[f"score:{scored.step}"] = f"{scored.score!r},{loss}"
    return fields


def assert_decision_matches(redis, job=JOB) -> dict[str, str]:
    """The stored decision equals the reference one; its version is the state's latest."""
    state = load_state(redis, job)
    stored = read_decision(redis, job)
    version = int(stored.pop("version"))
    assert stored == expected_decision(state)
    assert state.eval_version <= version <= state.version
    return stored


def drain_task(redis, job_ids, settings):
    bulk = drain_many(redis, job_ids, settings, time.monotonic() + 5)
    for job_id in bulk.left:
        drain_job(redis, job_id, settings)
    return bulk


@pytest.mark.parametrize("path", ["drain_job", "drain_many"])
def test_decision_holds_the_reference_scores_and_pick(path):
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused", drain_batch_events=3)
    publish(fake, [to_wire(e) for e in reference_run()])
    if path == "drain_job":
        drain_job(fake, JOB, settings)
    else:
        assert drain_task(fake, [JOB], settings).left == []
    stored = assert_decision_matches(fake)
    scores = [decode_decision_entry(stored[f"score:{10 * (i + 1)}"]) for i in range(5)]
    assert [round(s, 6) for s, _ in scores] == list(REFERENCE_SCORES)
    assert [loss for _, loss in scores] == list(EVAL_LOSSES)
    assert stored["best_step"] == "30" and stored["best_checkpoint"] == "checkpoint-30"
    assert round(float(stored["best_score"]), 6) == 0.329878
    assert stored["evals"] == "5" and stored["evals_since_best"] == "2"


def test_every_commit_that_changes_a_score_writes_the_decision_with_it():
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused", drain_batch_events=1)
    for event in reference_run():
        publish(fake, [to_wire(event)])
        drain_task(fake, [JOB], settings)
        state = load_state(fake, JOB)
        stored = read_decision(fake)
        if state.evals:
            assert int(stored["version"]) >= state.eval_version
            assert f"score:{max(state.evals)}" in stored
        assert_decision_matches(fake) if stored else None


def test_a_rotated_away_best_moves_the_pick_and_the_count():
    fake = fakeredis.FakeRedis()
    publish(fake, [to_wire(e) for e in reference_run(keep_all=False)])
    drain_task(fake, [JOB], Settings(redis_url="redis://unused"))
    stored = assert_decision_matches(fake)
    # Only checkpoints 40 and 50 remain: 40 is the best still on disk, one evaluation after it.
    assert stored["best_step"] == "40" and stored["evals_since_best"] == "1"
    assert stored["score:30"].startswith("0.3298")  # scores stay, whatever is on disk


def test_a_resume_rewrites_the_decision_without_the_dropped_evaluations():
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused")
    publish(fake, [to_wire(e) for e in reference_run()])
    drain_job(fake, JOB, settings)
    assert "score:50" in read_decision(fake)
    resumed = [begin(ts=100.0, resumed_from_step=30), train(40, 0.9, ts=101.0)]
    resumed += [evaluation(40, 0.7, ts=102.0), saved(40, [10, 20, 30, 40], ts=103.0)]
    publish(fake, [to_wire(e) for e in resumed])
    drain_task(fake, [JOB], settings)
    stored = assert_decision_matches(fake)
    assert "score:50" not in stored and stored["evals"] == "4"
    assert decode_decision_entry(stored["score:40"])[1] == 0.7


def test_a_compacted_job_that_gets_a_late_event_keeps_a_correct_decision():
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused")
    publish(fake, [to_wire(e) for e in [*reference_run(), end(50, ts=60.0)]])
    drain_job(fake, JOB, settings)
    assert compact_state(fake, JOB)
    publish(fake, [to_wire(evaluation(60, float("nan"), ts=61.0))])
    drain_task(fake, [JOB], settings)
    stored = assert_decision_matches(fake)
    assert math.isinf(decode_decision_entry(stored["score:60"])[0])
    assert stored["best_step"] == "30"


def test_the_row_names_one_checkpoint_and_keeps_the_eval_loss_pick_for_comparison():
    fake = fakeredis.FakeRedis()
    publish(fake, [to_wire(e) for e in reference_run()])
    drain_job(fake, JOB, Settings(redis_url="redis://unused"))
    row = job_row(load_state(fake, JOB))
    assert row["best_step"] == row["best_checkpoint_step"] == 30
    assert row["best_eval_loss"] == 0.8 and row["best_epoch"] == 3.0
    assert round(row["best_checkpoint_score"], 6) == 0.329878
    pick = row["best_score_breakdown"]["eval_loss_pick"]
    assert pick["step"] == 40 and pick["eval_loss"] == 0.75 and pick["epoch"] == 4.0
    assert round(pick["score"], 6) == 0.465585


def test_the_decision_is_per_job_and_hash_tagged():
    assert keys.decision("a-1") == "ckpt:{a-1}:decision"
    assert keys.decision("a-1").split("}")[0] == keys.state("a-1").split("}")[0]
