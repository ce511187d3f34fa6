"""The pipelined many-job drain gives the pure fold's state, and leaves what it cannot take to
``drain_job``: the task's result is the same as draining each job alone."""

from __future__ import annotations

import time

import fakeredis
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from scorer_worker import keys
from scorer_worker.bulk import drain_many
from scorer_worker.coalescing import flush_due
from scorer_worker.drain import drain_job
from scorer_worker.settings import Settings
from scorer_worker.state import JobState
from scorer_worker.store import compact_state, load_state
from tests.oracle import summarize  # an independent from-scratch reference, not the fold

from .helpers import JOB, evaluation, fold, saved, train
from .test_decision import assert_decision_matches
from .test_drain_pump_flush import publish, raw_run, to_wire
from .test_order_independence import runs


def drain_task(redis, job_ids, settings):
    """What ``tasks.drain_jobs`` does: the pipelined path, then drain_job for the rest."""
    bulk = drain_many(redis, job_ids, settings, time.monotonic() + 5)
    assert not bulk.failed
    for job_id in bulk.left:
        bulk.results[job_id] = drain_job(redis, job_id, settings)
    return bulk.results, bulk.left


def stored_summary(redis, job=JOB) -> str:
    return JobState.from_head(job, redis.hget(keys.state(job), "head")).summary.to_json()


@hyp_settings(max_examples=60, deadline=None)
@given(run=runs(), data=st.data())
def test_pipelined_drains_equal_the_pure_fold(run, data):
    check_pipelined_drains(fakeredis.FakeRedis(), run, data)


def check_pipelined_drains(redis, run, data, other_job: str = "job-2") -> None:
    """Two jobs drained in one task, in two parts (maybe out of order, maybe compacted
    between): the states equal the pure fold, the summaries and decisions the reference.

    Shared with the cluster variant (tests/test_cluster_data.py), where ``other_job`` lives
    on another master than ``JOB``.
    """
    settings = Settings(redis_url="redis://unused", drain_batch_events=data.draw(st.integers(1, 7)))
    events = run if data.draw(st.booleans()) else data.draw(st.permutations(run))
    other = [to_wire(e) for e in run]  # a second job in the same task, in order
    for e in other:
        e["job_id"] = other_job
    publish(redis, other, job=other_job)
    cut = data.draw(st.integers(0, len(events)))
    publish(redis, [to_wire(e) for e in events[:cut]])
    drain_task(redis, [JOB, other_job], settings)
    if data.draw(st.booleans()):
        compact_state(redis, JOB)
    publish(redis, [to_wire(e) for e in events[cut:]])
    results, _ = drain_task(redis, [JOB, other_job], settings)
    assert all(r.caught_up for r in results.values())
    for job in (JOB, other_job):
        state = load_state(redis, job)
        assert state.fingerprint() == fold(run, job=job).fingerprint()
        assert stored_summary(redis, job) == summarize(load_state(redis, job)).to_json()
        assert redis.xlen(keys.events(job)) == 0
        if load_state(redis, job).evals:
            assert_decision_matches(redis, job)


def test_in_order_jobs_all_take_the_pipelined_path():
    fake = fakeredis.FakeRedis()
    jobs = [f"job-{i}" for i in range(20)]
    for job in jobs:
        publish(fake, raw_run(5, job=job), job=job)
    settings = Settings(redis_url="redis://unused", drain_batch_events=4)
    bulk = drain_many(fake, jobs, settings, time.monotonic() + 5)
    assert bulk.left == [] and all(r.caught_up and r.events == 11 for r in bulk.results.values())
    more = [train(60, 0.3, ts=60), evaluation(60, 1.9, ts=60), saved(60, [50, 60], ts=60)]
    for job in jobs:
        publish(fake, [{**to_wire(e), "job_id": job} for e in more], job=job)
    bulk = drain_many(fake, jobs, settings, time.monotonic() + 5)
    assert bulk.left == [] and all(r.events == 3 for r in bulk.results.values())
    state = load_state(fake, jobs[0])
    assert stored_summary(fake, jobs[0]) == summarize(state).to_json()
    assert summarize(state).retained == [50, 60]


def test_what_the_pipelined_path_cannot_take_is_left_to_drain_job():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    publish(fake, raw_run(3, job="resumed"), job="resumed")
    settings = Settings(redis_url="redis://unused")
    drain_task(fake, [JOB, "resumed"], settings)
    fake.xadd(keys.events(JOB), {"event": b"not json"})  # a dead letter
    late = {**to_wire(train(5, 9.0, ts=50)), "job_id": "resumed"}  # below the last eval
    publish(fake, [late], job="resumed")
    results, left = drain_task(fake, [JOB, "resumed"], settings)
    assert sorted(left) == sorted([JOB, "resumed"])
    assert results[JOB].dead == 1 and load_state(fake, "resumed").train[5].loss == 9.0


def test_a_job_committed_by_someone_else_meanwhile_is_redone_by_drain_job(monkeypatch):
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    settings = Settings(redis_url="redis://unused")
    drain_task(fake, [JOB], settings)
    publish(fake, [to_wire(train(100, 0.1, ts=100))])
    import scorer_worker.commit as commits

    original = commits.commit_all

    def racing_commit(redis, prepared, wait=None):
        monkeypatch.setattr(commits, "commit_all", original)
        drain_job(redis, JOB, settings)  # another worker commits first
        return original(redis, prepared, wait)

    monkeypatch.setattr(commits, "commit_all", racing_commit)
    version_before = load_state(fake, JOB).version
    # The compare-and-set refused the stale commit: drain_job redoes the job.
    assert drain_many(fake, [JOB], settings, time.monotonic() + 5).left == [JOB]
    assert load_state(fake, JOB).version == version_before + 1  # the other worker's, only


def test_a_round_shares_its_event_budget_among_the_jobs(monkeypatch):
    import scorer_worker.bulk as bulk

    monkeypatch.setattr(bulk, "ROUND_EVENTS", 30)  # 3 jobs: 10 events each per round
    fake = fakeredis.FakeRedis()
    jobs = ["a", "b", "c"]
    for job in jobs:
        publish(fake, raw_run(20, job=job), job=job)  # train_begin, 20 x (train, eval)
    settings = Settings(redis_url="redis://unused")
    result = drain_many(fake, jobs, settings, time.monotonic() + 5)
    assert result.left == []
    for job in jobs:
        assert result.results[job].events == 41 and result.results[job].commits == 5
        assert stored_summary(fake, job) == summarize(load_state(fake, job)).to_json()
    fake_alone = fakeredis.FakeRedis()  # the same run drained by drain_job alone
    publish(fake_alone, raw_run(20, job="a"), job="a")
    drain_job(fake_alone, "a", settings)
    assert load_state(fake, "a").fingerprint() == load_state(fake_alone, "a").fingerprint()


def test_an_entry_at_or_before_the_cursor_is_left_to_drain_job():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    settings = Settings(redis_url="redis://unused")
    drain_task(fake, [JOB], settings)
    # A stream entry the cursor already passed (a commit never leaves one): the pipelined
    # path reads the stream from its start, so it must not fold it.
    state = load_state(fake, JOB)
    publish(fake, [to_wire(train(100, 0.1, ts=100))])
    entry = fake.xrange(keys.events(JOB))[0][0].decode()
    millis = int(entry.split("-")[0]) + 1000
    head = state.head_json().replace(f'"cursor":"{state.cursor}"', f'"cursor":"{millis}-0"')
    fake.hset(keys.state(JOB), "head", head)
    fake.hset(keys.meta(JOB), "cursor", f"{millis}-0")
    assert drain_many(fake, [JOB], settings, time.monotonic() + 5).left == [JOB]
    assert drain_job(fake, JOB, settings).events == 0  # from the cursor: nothing new


def test_a_meta_cursor_that_is_not_the_heads_is_left_to_drain_job():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    settings = Settings(redis_url="redis://unused")
    drain_task(fake, [JOB], settings)
    publish(fake, [to_wire(train(100, 0.1, ts=100))])
    fake.hset(keys.meta(JOB), "cursor", "1-0")
    assert drain_many(fake, [JOB], settings, time.monotonic() + 5).left == [JOB]
    assert drain_job(fake, JOB, settings).events == 1


def test_the_flush_levels_are_those_after_the_commit():
    fake = fakeredis.FakeRedis()
    publish(fake, raw_run(3))
    settings = Settings(redis_url="redis://unused")
    result = drain_many(fake, [JOB], settings, time.monotonic() + 5)
    state, levels = load_state(fake, JOB), result.levels[JOB]
    assert (levels.version, levels.eval_version) == (state.version, state.eval_version)
    assert levels.eval_changed and flush_due(levels, time.time(), 1.0)  # never written
