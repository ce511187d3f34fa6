"""One fold, and a sink that maps facts: the rebuild equals an independent oracle, every pick
carries its breakdown, the sink scores nothing, and the flush lock is redis-py's."""

from __future__ import annotations

import ast
import json
import math
import time
from pathlib import Path

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scorer_worker import keys
from scorer_worker.drain import drain_job
from scorer_worker.facts import load_for_row
from scorer_worker.ranking import decide, summarize
from scorer_worker.registry import register_job
from scorer_worker.scoring import DEFAULT_PROFILE, PROFILES, score_eval
from scorer_worker.settings import Settings
from scorer_worker.store import load_state
from scorer_worker.summary import Summary
from sink.flush import flush_job
from sink.rows import job_row, json_safe
from sink.writers.sqlite import SqliteWriter

from . import oracle
from .helpers import JOB, begin, evaluation, fold, saved, train
from .test_drain_pump_flush import publish, raw_run, to_wire
from .test_order_independence import runs

SINK = Path(__file__).resolve().parents[1] / "sink"


def canonical(value) -> str:
    """JSON with NaN spelled out, so that equal NaNs compare equal."""
    return json.dumps(value, sort_keys=True, default=repr)


def scored_view(decision) -> str:
    evals = [vars(e) for e in decision.evals]
    picks = [vars(p) if p else None for p in (decision.best, decision.best_by_eval_loss)]
    return canonical([evals, picks])


@settings(max_examples=150, deadline=None)
@given(run=runs(), data=st.data())
def test_the_fold_equals_the_brute_force_oracle(run, data):
    events = data.draw(st.permutations(run))
    assert summarize(fold(events)).to_json() == oracle.summarize(fold(events)).to_json()
    assert scored_view(decide(fold(events))) == scored_view(oracle.decide(fold(events)))


few_losses = st.sampled_from([0.0, 0.5, 1.0, math.nan, math.inf, -1.0, None])


@st.composite
def dense_runs(draw):
    """Train logs and evals that share steps, with few distinct losses (ties), and saves."""
    events = [begin()]
    for ts, step in enumerate(draw(st.lists(st.integers(1, 8), max_size=20)), start=1):
        kind = draw(st.sampled_from(["train", "eval", "save"]))
        if kind == "train":
            events.append(train(step * 10, draw(few_losses), ts=ts))
        elif kind == "eval":
            events.append(evaluation(step * 10, draw(few_losses), ts=ts))
        else:
            kept = draw(st.lists(st.integers(1, 8), max_size=3))
            events.append(saved(step * 10, [k * 10 for k in kept], ts=ts))
    return events


@settings(max_examples=200, deadline=None)
@given(run=dense_runs(), profile=st.sampled_from(sorted(PROFILES)))
def test_the_fold_equals_the_oracle_on_shared_steps_and_ties(run, profile):
    chosen = PROFILES[profile]
    assert summarize(fold(run), chosen).to_json() == oracle.summarize(fold(run), chosen).to_json()
    assert scored_view(decide(fold(run), chosen)) == scored_view(oracle.decide(fold(run), chosen))


def test_the_row_breakdown_is_the_stored_one_with_the_eval_loss_pick():
    run = [begin(), train(10, 2.8), evaluation(10, 2.5), train(20, 1.1), evaluation(20, 1.2)]
    state = fold([*run, saved(20, [10, 20])])
    state.summary = summarize(state)
    best = state.summary.best
    assert best.step == 20 and best.breakdown is not None
    expected = dict(score_eval(best.eval_loss, best.train_loss, 0, DEFAULT_PROFILE).breakdown)
    expected["eval_loss_pick"] = {"step": 20, "epoch": 2.0, "eval_loss": 1.2, "score": best.score}
    assert job_row(state)["best_score_breakdown"] == json_safe(expected)


def test_the_sink_imports_no_scoring_function():
    scoring_modules = {"scorer_worker.scoring", "scorer_worker.ranking"}
    for path in SINK.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in scoring_modules, path
                names = {alias.name for alias in node.names}
                assert not names & {"score_eval", "summarize", "decide", "pick_of"}, path


def _old_summary_json(summary: Summary) -> dict:
    """``summary`` as a version without breakdowns stored it."""
    data = summary.to_dict()
    for name in ("last_eval", "best", "best_by_eval_loss"):
        if data[name]:
            data[name].pop("breakdown")
    return json.loads(json.dumps(data))


def test_a_summary_stored_without_breakdowns_loads_and_is_rebuilt_on_the_next_change():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    drain_job(fake, JOB, Settings(redis_url="redis://unused"))
    state = load_state(fake, JOB)
    old = Summary.from_dict(_old_summary_json(state.summary))
    assert old.stale and old.best.breakdown is None
    state.summary = old
    assert job_row(state)["best_score_breakdown"] is None  # null, not a score made up
    fake.hset(keys.state(JOB), "head", state.head_json())
    publish(fake, [to_wire(train(35, 0.5, ts=40))])
    drain_job(fake, JOB, Settings(redis_url="redis://unused"))
    rebuilt = load_state(fake, JOB).summary
    assert not rebuilt.stale
    assert rebuilt.to_json() == oracle.summarize(load_state(fake, JOB)).to_json()


def test_a_head_without_summary_is_not_summarized_by_the_sink(tmp_path):
    fake = fakeredis.FakeRedis()
    sink_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    config = Settings(redis_url="redis://unused", sink_url=sink_url)
    writer = SqliteWriter(str(tmp_path / "jobs.db"))
    writer.ensure_schema()
    writer.create_job(JOB, "tok")
    register_job(fake, JOB, "tok")
    publish(fake, raw_run(2))
    drain_job(fake, JOB, config)
    head = json.loads(fake.hget(keys.state(JOB), "head"))
    head["summary"] = None  # a state written before summaries existed
    fake.hset(keys.state(JOB), "head", json.dumps(head))
    assert load_for_row(fake, JOB, written_version=0).summary is None
    assert flush_job(fake, JOB, config).outcome == "deferred"
    assert writer.read_job(JOB)["scoring_version"] is None
    assert b"no summary" in fake.hget(keys.meta(JOB), "sink_error")
    with pytest.raises(ValueError, match="no summary"):
        job_row(load_for_row(fake, JOB, written_version=0))


class _LockStealingWriter:
    """Delegates to SQLite; during a write, the flush lock expires and another flush takes it."""

    def __init__(self, inner: SqliteWriter, redis, steal: bool) -> None:
        self.inner, self.redis, self.steal = inner, redis, steal
        self.ttl_seen: list[int] = []

    def write(self, *args):
        self.ttl_seen.append(self.redis.ttl(keys.flush_lock(JOB)))
        if self.steal:
            self.redis.set(keys.flush_lock(JOB), "another-flush", ex=30)
        return self.inner.write(*args)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def registered(tmp_path):
    fake = fakeredis.FakeRedis()
    sink_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    config = Settings(redis_url="redis://unused", sink_url=sink_url, flush_lock_ttl_s=7)
    writer = SqliteWriter(str(tmp_path / "jobs.db"))
    writer.ensure_schema()
    writer.create_job(JOB, "tok")
    register_job(fake, JOB, "tok")
    publish(fake, raw_run(2))
    drain_job(fake, JOB, config)
    return fake, config, writer


def test_the_flush_lock_is_held_with_its_ttl_and_released(registered):
    fake, config, writer = registered
    spy = _LockStealingWriter(writer, fake, steal=False)
    assert flush_job(fake, JOB, config, spy).outcome == "written"
    assert spy.ttl_seen and 0 < spy.ttl_seen[0] <= config.flush_lock_ttl_s
    assert not fake.exists(keys.flush_lock(JOB))


def test_a_lost_flush_lock_is_not_released_from_under_its_new_holder(registered):
    fake, config, writer = registered
    assert flush_job(fake, JOB, config, _LockStealingWriter(writer, fake, True)).outcome == (
        "written"
    )
    assert fake.get(keys.flush_lock(JOB)) == b"another-flush"


def test_the_renewer_extends_the_lock_past_the_retry_wait(monkeypatch):
    from sink.flush import _LockRenewer

    fake = fakeredis.FakeRedis()
    lock = fake.lock("lock", timeout=5, blocking=False, thread_local=False)
    assert lock.acquire()
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    _LockRenewer(lock, 5)(20.0)
    assert 20 < fake.ttl("lock") <= 26
    fake.set("lock", "another-flush")
    _LockRenewer(lock, 5)(1.0)  # lost: neither raises nor touches the new holder's lock
    assert fake.get("lock") == b"another-flush" and fake.ttl("lock") == -1
