"""Unit tests of drain, pump and flush on fakeredis (the real-server paths are end to end)."""

from __future__ import annotations

import random

import fakeredis
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from rq import Queue

from producer.events import build_event, encode_event, wire_number
from scorer_worker import keys
from scorer_worker.drain import drain_job
from scorer_worker.pump import Pump
from scorer_worker.registry import register_job
from scorer_worker.settings import Settings
from scorer_worker.store import StateTransaction, compact_state, load_state
from sink.flush import flush_job
from sink.tasks import FLUSH
from sink.writers.sqlite import SqliteWriter

from .helpers import JOB, fold
from .test_order_independence import runs


@pytest.fixture
def fake():
    return fakeredis.FakeRedis()


@pytest.fixture
def settings(tmp_path):
    return Settings(
        redis_url="redis://unused",
        sink_url=f"sqlite:///{tmp_path / 'jobs.db'}",
        drain_batch_events=3,
    )


def publish(redis, events, job=JOB):
    for event in events:
        redis.xadd(keys.events(job), {"event": encode_event(event)})


def raw_run(n_evals=6, job=JOB):
    events = [
        build_event(
            "train_begin",
            job,
            0,
            0.0,
            info={"max_steps": n_evals * 10, "resumed_from_step": 0},
            ts=0,
        )
    ]
    for i in range(1, n_evals + 1):
        events.append(build_event("train_log", job, i * 10, i, {"loss": 3.0 / i}, ts=i))
        events.append(
            build_event("eval", job, i * 10, i, {"eval_loss": 2.0 + abs(i - 3) * 0.2}, ts=i)
        )
    return events


def test_drain_commits_state_cursor_and_trims(fake, settings):
    publish(fake, raw_run())
    result = drain_job(fake, JOB, settings)
    assert result.events == 13 and result.caught_up and result.dead == 0
    state = load_state(fake, JOB)
    assert len(state.evals) == 6 and state.version == result.commits  # one version per batch
    assert fake.xlen(keys.events(JOB)) == 0
    meta = fake.hgetall(keys.meta(JOB))
    assert meta[b"cursor"].decode() == state.cursor and int(meta[b"version"]) == state.version


def test_drain_of_a_shuffled_duplicated_stream_equals_the_ordered_fold(fake, settings):
    from scorer_worker.models import WireEvent

    events = raw_run(8)
    shuffled = events + random.Random(7).sample(events, 10)
    random.Random(3).shuffle(shuffled)
    publish(fake, shuffled)
    drain_job(fake, JOB, settings)
    expected = fold([WireEvent.model_validate(e) for e in events])
    assert load_state(fake, JOB).fingerprint() == expected.fingerprint()


def test_a_concurrent_commit_is_detected_and_nothing_is_written(fake, settings):
    publish(fake, raw_run(1))
    txn = StateTransaction(fake, JOB)
    txn.read_events(10)
    drain_job(fake, JOB, settings)  # another worker commits first
    version_after_other = load_state(fake, JOB).version
    from scorer_worker.errors import StateConflict

    with pytest.raises(StateConflict):
        txn.commit([])
    assert load_state(fake, JOB).version == version_after_other


def test_pump_enqueues_one_drain_per_job_until_the_task_starts(fake, settings):
    register_job(fake, JOB, "tok")
    publish(fake, raw_run(1))
    pump = Pump(fake, settings, flush=FLUSH)
    first, second = pump.run_once(), pump.run_once()
    assert (first.drains_enqueued, second.drains_enqueued) == (1, 0)
    assert second.behind_scoring == 1
    assert Queue("scoring", connection=fake).count == 1
    fake.delete(keys.queued(JOB, "scoring"))  # the task started (or its marker expired)
    assert pump.run_once().drains_enqueued == 1


def test_pump_discovers_unregistered_streams_and_retires_finished_jobs(fake, settings, tmp_path):
    publish(fake, raw_run(1))
    pump = Pump(fake, settings, flush=FLUSH)
    assert pump.run_once().jobs == 1  # discovered though never registered
    events = [
        *raw_run(1)[:1],
        build_event("train_end", JOB, 10, 1.0, info={"status": "completed"}, ts=5),
    ]
    publish(fake, events)
    drain_job(fake, JOB, settings)
    fake.hset(keys.meta(JOB), "written_version", load_state(fake, JOB).version)
    result = pump.run_once()
    assert result.retired == 1 and not fake.sismember(keys.JOBS, JOB)


def test_pump_shards_partition_the_jobs(fake, settings):
    for i in range(40):
        register_job(fake, f"job-{i}", "tok")
    owned = [sum(Pump(fake, settings, i, 3).owns(f"job-{j}") for j in range(40)) for i in range(3)]
    assert sum(owned) == 40 and all(owned)


def _sqlite(settings):
    writer = SqliteWriter(settings.sink_url.removeprefix("sqlite:///"))
    writer.ensure_schema()
    return writer


def test_flush_writes_once_then_is_up_to_date(fake, settings):
    writer = _sqlite(settings)
    writer.create_job(JOB, "tok")
    register_job(fake, JOB, "tok")
    publish(fake, raw_run())
    drain_job(fake, JOB, settings)
    first = flush_job(fake, JOB, settings)
    assert first.outcome == "written" and first.metrics == 6
    assert flush_job(fake, JOB, settings).outcome == "up-to-date"
    row = writer.read_job(JOB)
    assert (
        row["best_checkpoint_step"] == 30
        and row["scoring_version"] == load_state(fake, JOB).version
    )


def test_flush_records_a_permanent_error_and_does_not_retry(fake, settings):
    _sqlite(settings)  # no row created for the job
    register_job(fake, JOB, "tok")
    publish(fake, raw_run(1))
    drain_job(fake, JOB, settings)
    result = flush_job(fake, JOB, settings)
    assert result.outcome == "error"
    meta = fake.hgetall(keys.meta(JOB))
    assert meta[b"sink_error_kind"] == b"permanent" and b"no row" in meta[b"sink_error"]
    assert flush_job(fake, JOB, settings).outcome == "refused"  # not retried forever
    assert Pump(fake, settings, flush=FLUSH).run_once().flushes_enqueued == 0
    # The version it could not write is not counted as written: the row still lags.
    assert b"written_version" not in meta and meta[b"refused_version"] == b"1"


def test_flush_of_an_unregistered_job_says_so(fake, settings):
    _sqlite(settings)
    publish(fake, raw_run(1))
    drain_job(fake, JOB, settings)
    assert flush_job(fake, JOB, settings).outcome == "error"
    assert b"not registered" in fake.hget(keys.meta(JOB), "sink_error")


def test_only_one_flush_per_job_at_a_time(fake, settings):
    fake.set(keys.flush_lock(JOB), "someone-else")
    assert flush_job(fake, JOB, settings).outcome == "busy"


def to_wire(event) -> dict:
    """A validated event back in wire form (NaN and infinities as strings)."""
    data = event.model_dump()
    data["metrics"] = {k: wire_number(v) for k, v in data["metrics"].items()}
    return data


@hyp_settings(max_examples=40, deadline=None)
@given(run=runs(), data=st.data())
def test_drains_in_small_batches_equal_the_pure_fold(run, data):
    """Partial loading (only the records a batch touches) gives the state of the pure fold."""
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused", drain_batch_events=data.draw(st.integers(1, 7)))
    events = data.draw(st.permutations(run + data.draw(st.lists(st.sampled_from(run), max_size=5))))
    half = len(events) // 2
    publish(fake, [to_wire(e) for e in events[:half]])
    drain_job(fake, JOB, settings)
    if data.draw(st.booleans()):
        compact_state(fake, JOB)  # a compacted job that receives more events is unpacked
    publish(fake, [to_wire(e) for e in events[half:]])
    drain_job(fake, JOB, settings)
    assert load_state(fake, JOB).fingerprint() == fold(run).fingerprint()


def test_a_drain_reads_only_the_records_its_batch_touches(fake, settings):
    publish(fake, raw_run(200))
    while not drain_job(fake, JOB, settings).caught_up:  # a drain stops at its time budget
        pass
    before = len(fake.hkeys(keys.state(JOB)))
    txn = StateTransaction(fake, JOB)
    txn.read_events(10)
    new_eval = build_event("eval", JOB, 5000, 500.0, {"eval_loss": 1.0}, ts=9999)
    from scorer_worker.models import WireEvent

    txn.load_for([WireEvent.model_validate(new_eval)])
    assert len(txn.state.evals) + len(txn.state.train) <= 1  # not the 400 records stored
    assert before > 400


def test_compacted_state_is_small_and_loads_back(fake, settings):
    publish(fake, raw_run(100))
    drain_job(fake, JOB, settings)
    full = load_state(fake, JOB)
    assert compact_state(fake, JOB)
    assert sorted(k.decode() for k in fake.hkeys(keys.state(JOB))) == ["head", "packed"]
    assert load_state(fake, JOB).fingerprint() == full.fingerprint()
    assert not compact_state(fake, JOB)  # already packed


def test_flush_due_coalesces_train_logs_but_not_evals_or_the_end():
    from scorer_worker.coalescing import flush_due
    from scorer_worker.levels import Levels

    train_only = Levels(version=5, written=4, eval_version=2, last_flush_at=100.0)
    assert not flush_due(train_only, now=100.5, min_interval_s=1.0)
    assert flush_due(train_only, now=101.0, min_interval_s=1.0)
    new_eval = Levels(version=5, written=4, eval_version=5, last_flush_at=100.0)
    assert flush_due(new_eval, now=100.0, min_interval_s=1.0)  # evals are written at once
    ended = Levels(version=5, written=4, status="completed", last_flush_at=100.0)
    assert flush_due(ended, now=100.0, min_interval_s=1.0)
    assert flush_due(Levels(version=1), now=0.0, min_interval_s=1.0)  # never written
    assert not flush_due(Levels(version=4, written=4), now=1e9, min_interval_s=1.0)


def test_a_deferred_flush_is_made_by_the_pump_when_due(fake, tmp_path):
    settings = Settings(
        redis_url="redis://unused",
        sink_url=f"sqlite:///{tmp_path / 'j.db'}",
        flush_min_interval_s=0.3,
    )
    _sqlite(settings).create_job(JOB, "tok")
    register_job(fake, JOB, "tok")
    publish(fake, raw_run(1))
    drain_job(fake, JOB, settings)
    assert flush_job(fake, JOB, settings).outcome == "written"
    publish(fake, [build_event("train_log", JOB, 11, 1.1, {"loss": 0.5}, ts=20)])
    drain_job(fake, JOB, settings)
    assert flush_job(fake, JOB, settings).outcome == "deferred"  # a train log, just written
    pump = Pump(fake, settings, flush=FLUSH)
    assert pump.run_once().flushes_enqueued == 0  # not due yet: no task
    import time as clock

    clock.sleep(0.35)
    assert pump.run_once().flushes_enqueued == 1  # due now: the pump asks for it
    assert flush_job(fake, JOB, settings).outcome == "written"


def test_scan_levels_returns_only_jobs_to_act_on_and_counts_the_behind(fake, settings):
    from scorer_worker.scan import scan_levels

    for job in ("idle", "undrained", "unwritten", "queued"):
        register_job(fake, job, "tok")
        publish(fake, raw_run(1, job=job), job=job)
    for job in ("idle", "unwritten"):
        drain_job(fake, job, settings)
    fake.hset(keys.meta("idle"), "written_version", load_state(fake, "idle").version)
    fake.set(keys.queued("queued", "scoring"), "1")
    scan = scan_levels(fake, ["idle", "undrained", "unwritten", "queued"])
    work = {w.job_id: w for w in scan.work}
    # The idle job costs nothing, and neither does the one whose drain is queued already.
    assert sorted(work) == ["undrained", "unwritten"]
    assert (scan.behind_scoring, scan.behind_sink) == (2, 1)
    assert work["undrained"].levels.undrained == 3 and not work["undrained"].drain_queued
    fake.set(keys.queued("unwritten", "sink"), "1")
    fake.set(keys.queued("undrained", "scoring"), "1")
    assert scan_levels(fake, ["idle", "undrained", "unwritten", "queued"]).work == []
    unwritten = work["unwritten"].levels
    assert unwritten.undrained == 0 and unwritten.version > unwritten.written == 0


def test_scan_levels_leaves_out_jobs_with_both_tasks_queued_and_counts_them_behind(
    fake, settings, monkeypatch
):
    from scorer_worker import scan as scans

    for job in ("both", "drain_only"):
        register_job(fake, job, "tok")
        publish(fake, raw_run(1, job=job), job=job)
        drain_job(fake, job, settings)  # drained: behind the sink, nothing undrained
        publish(fake, raw_run(1, job=job), job=job)  # and behind the scorer again
    fake.set(keys.queued("both", "scoring"), "1")
    fake.set(keys.queued("both", "sink"), "1")
    fake.set(keys.queued("drain_only", "scoring"), "1")
    scanned: list[list[str]] = []
    real = scans.run_chunked

    def recording(client, name, job_ids, *args, **kwargs):
        scanned.append(list(job_ids))
        return real(client, name, job_ids, *args, **kwargs)

    monkeypatch.setattr(scans, "run_chunked", recording)
    scan = scans.scan_levels(fake, ["both", "drain_only"])
    assert scanned == [["drain_only"]]  # the data side never reads the job with both queued
    assert [w.job_id for w in scan.work] == ["drain_only"]  # its flush is due
    assert (scan.behind_scoring, scan.behind_sink) == (2, 2)
