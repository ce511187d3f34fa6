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
from scorer_worker.drain import drain_job
from scorer_worker.ranking import summarize
from scorer_worker.settings import Settings
from scorer_worker.state import JobState
from scorer_worker.store import compact_state, load_state

from .helpers import JOB, evaluation, fold, saved, train
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
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused", drain_batch_events=data.draw(st.integers(1, 7)))
    events = run if data.draw(st.booleans()) else data.draw(st.permutations(run))
    other = [to_wire(e) for e in run]  # a second job in the same task, in order
    for e in other:
        e["job_id"] = "job-2"
    publish(fake, other, job="job-2")
    cut = data.draw(st.integers(0, len(events)))
    publish(fake, [to_wire(e) for e in events[:cut]])
    drain_task(fake, [JOB, "job-2"], settings)
    if data.draw(st.booleans()):
        compact_state(fake, JOB)
    publish(fake, [to_wire(e) for e in events[cut:]])
    results, _ = drain_task(fake, [JOB, "job-2"], settings)
    assert all(r.caught_up for r in results.values())
    for job in (JOB, "job-2"):
        state = load_state(fake, job)
        assert state.fingerprint() == fold(run, job=job).fingerprint()
        assert stored_summary(fake, job) == summarize(load_state(fake, job)).to_json()
        assert fake.xlen(keys.events(job)) == 0


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
    import scorer_worker.bulk as bulk

    original = bulk._commit

    def racing_commit(redis, jobs):
        drain_job(redis, JOB, settings)  # another worker commits first
        return original(redis, jobs)

    monkeypatch.setattr(bulk, "_commit", racing_commit)
    version_before = load_state(fake, JOB).version
    # The compare-and-set refused the stale commit: drain_job redoes the job.
    assert drain_many(fake, [JOB], settings, time.monotonic() + 5).left == [JOB]
    assert load_state(fake, JOB).version == version_before + 1  # the other worker's, only
