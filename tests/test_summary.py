"""The drain's incremental row summary always equals the from-scratch one, and flushes read
only what changed (the O(changes) flush)."""

from __future__ import annotations

import json
import math

import fakeredis
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from scorer_worker import keys
from scorer_worker.drain import drain_job
from scorer_worker.facts import load_for_row
from scorer_worker.settings import Settings
from scorer_worker.state import JobState
from scorer_worker.store import StateTransaction, compact_state, load_state
from sink.rows import job_row, loss_trend

from .helpers import JOB, begin, evaluation, fold, saved, train
from .oracle import summarize
from .test_drain_pump_flush import publish, raw_run, to_wire
from .test_order_independence import runs


def stored_summary(redis) -> str:
    head = redis.hget(keys.state(JOB), "head")
    return JobState.from_head(JOB, head).summary.to_json()


def reference_summary(redis) -> str:
    return summarize(load_state(redis, JOB)).to_json()


def row_json(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


@hyp_settings(max_examples=60, deadline=None)
@given(run=runs(), data=st.data())
def test_incremental_summary_equals_the_rebuilt_one_in_any_order(run, data):
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused", drain_batch_events=data.draw(st.integers(1, 6)))
    in_order = data.draw(st.booleans())  # most runs arrive in order: exercise that path too
    events = run if in_order else data.draw(st.permutations(run))
    cut = data.draw(st.integers(0, len(events)))
    publish(fake, [to_wire(e) for e in events[:cut]])
    drain_job(fake, JOB, settings)
    if cut:
        assert stored_summary(fake) == reference_summary(fake)
    if data.draw(st.booleans()):
        compact_state(fake, JOB)
    publish(fake, [to_wire(e) for e in events[cut:]])
    drain_job(fake, JOB, settings)
    assert stored_summary(fake) == reference_summary(fake)
    folded = fold(run)
    expected = job_row(folded, summarize(folded))
    expected.pop("scoring_version")
    got = job_row(load_for_row(fake, JOB, written_version=1))
    got.pop("scoring_version")
    assert row_json(got) == row_json(expected)


def test_an_in_order_run_is_never_fully_loaded(monkeypatch):
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    settings = Settings(redis_url="redis://unused", drain_batch_events=4)
    drain_job(fake, JOB, settings)  # the first batch holds the train_begin: a full load
    full_loads = []
    original = StateTransaction.load_all
    monkeypatch.setattr(
        StateTransaction, "load_all", lambda self: full_loads.append(1) or original(self)
    )
    more = []
    for i in range(4, 40):
        more.append(train(i * 10, 3.0 / i, ts=i))
        more.append(evaluation(i * 10, 2.0 + abs(i - 20) * 0.01, ts=i))
        if i % 5 == 0:
            more.append(saved(i * 10, [i * 10 - 50, i * 10], ts=i))
    publish(fake, [to_wire(e) for e in more])
    drain_job(fake, JOB, settings)
    assert full_loads == []
    assert stored_summary(fake) == reference_summary(fake)
    late = train(15, 9.9, ts=100)  # below the last eval: re-pairs evals, so a full load
    publish(fake, [to_wire(late)])
    drain_job(fake, JOB, settings)
    assert full_loads == [1]
    assert stored_summary(fake) == reference_summary(fake)


def test_a_duplicate_below_the_last_step_does_not_force_a_full_load(monkeypatch):
    fake = fakeredis.FakeRedis()
    events = raw_run(5)
    publish(fake, events)
    settings = Settings(redis_url="redis://unused")
    drain_job(fake, JOB, settings)
    monkeypatch.setattr(StateTransaction, "load_all", lambda self: 1 / 0)
    publish(fake, events[1:4])  # replayed after a producer restart
    assert drain_job(fake, JOB, settings).events == 3


def test_a_flush_reads_only_the_records_changed_since_the_last_write():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(300))
    settings = Settings(redis_url="redis://unused")
    drain_job(fake, JOB, settings)
    written = load_state(fake, JOB).version
    fake.zremrangebyscore(keys.changes(JOB), "-inf", written)  # what a flush does after writing
    new = [train(3010, 0.4, ts=400), evaluation(3010, 1.5, ts=400)]
    publish(fake, [to_wire(e) for e in new])
    drain_job(fake, JOB, settings)
    partial = load_for_row(fake, JOB, written)
    assert list(partial.train) == [3010] and list(partial.evals) == [3010]
    full = load_state(fake, JOB)
    assert row_json(job_row(partial)) == row_json(job_row(full))


def test_a_new_or_re_registered_job_gets_every_record():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(5))
    drain_job(fake, JOB, Settings(redis_url="redis://unused"))
    assert len(load_for_row(fake, JOB, written_version=0).evals) == 5


def test_an_eval_without_loss_before_a_good_one_has_no_trend():
    state = fold([begin(), train(10, 1.0), evaluation(10, None), evaluation(20, 0.5)])
    assert loss_trend(summarize(state)) is None
    assert job_row(state, summarize(state))["loss_trend"] is None
    diverged = fold([begin(), evaluation(10, 0.5), evaluation(20, math.nan)])
    assert job_row(diverged, summarize(diverged))["loss_trend"] == "diverged"
