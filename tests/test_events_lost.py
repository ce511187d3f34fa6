"""A full spool disk (issue #16, part 4): the publisher keeps training going and memory
bounded, counts what it drops and tells the scorer (``events_lost``), which keeps the largest
count per publisher instance; the row and ``status`` show the sum. The disk is a real 64 KiB
tmpfs where one can be mounted (root), else a spool whose writes fail as a full disk's do
(``small_disk.Disk``); Redis is fakeredis with its connection cut, or the private server."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fakeredis
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from ckpt_pipeline.runner import run_all_in_one
from ckpt_pipeline.status import pipeline_state
from ckpt_pipeline.testing import small_disk
from producer import EventPublisher
from producer.events import build_event, build_loss_report, encode_event
from producer.spool import Spool
from producer.wire import EVENT_FIELD, stream_key
from scorer_worker import keys
from scorer_worker.errors import InvalidEvent
from scorer_worker.models import WireEvent, decode_event
from scorer_worker.registry import register_job
from scorer_worker.scoring import DEFAULT_PROFILE
from scorer_worker.state import MAX_LOSS_REPORTERS, JobState
from scorer_worker.store import load_state
from scorer_worker.summary import Summary
from sink.rows import JOB_COLUMN_NAMES, job_row
from sink.writers.sqlite import IDENTITY_COLUMNS, SqliteWriter

from .helpers import JOB, begin, evaluation, fold, saved, train
from .test_publisher import wait_for

DISK_BYTES = 64 * 1024
MAX_PUBLISH_S = 0.005
A, B = "a" * 32, "b" * 32  # publisher instances


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[small_disk.Disk]:
    """A 64 KiB tmpfs where the test may mount one, else a spool whose writes are refused."""
    with small_disk.spool_disk(tmp_path / "disk", DISK_BYTES, monkeypatch.setattr) as made:
        yield made


@pytest.fixture
def server() -> fakeredis.FakeServer:
    """A fakeredis server whose connection the test cuts (``connected = False``)."""
    return fakeredis.FakeServer()


@pytest.fixture
def publishers(server, disk) -> Iterator[Callable[..., EventPublisher]]:
    """Publishers on ``server`` spooling to ``disk``; all closed at the end."""
    made: list[EventPublisher] = []

    def make(**options) -> EventPublisher:
        options = {"flush_interval_ms": 10, "retry_max_s": 0.2, **options}
        client = fakeredis.FakeRedis(server=server)
        made.append(EventPublisher(JOB, redis_client=client, spool_dir=disk.folder, **options))
        return made[-1]

    yield make
    server.connected = True
    for publisher in made:
        publisher.close(timeout_s=2.0)


def event(step: int) -> dict:
    return build_event("train_log", JOB, step, step / 10, {"loss": 1.0 / (step + 1)}, ts=step)


def stream(server: fakeredis.FakeServer) -> list[WireEvent]:
    client = fakeredis.FakeRedis(server=server)
    return [decode_event(f[EVENT_FIELD.encode()], JOB) for _, f in client.xrange(stream_key(JOB))]


def steps_of(events: list[WireEvent]) -> list[int]:
    return [e.step for e in events if e.kind != "events_lost"]


def reports_of(events: list[WireEvent]) -> list[tuple[str, int]]:
    return [(e.info.instance, e.info.lost) for e in events if e.kind == "events_lost"]


def spool_steps(spool: Spool) -> list[int]:
    events, _ = spool.read_batch(10_000)
    return [decode_event(text, JOB).step for text in events]


def timed_publish(publisher: EventPublisher, step: int, durations: list[float]) -> bool:
    started = time.perf_counter()
    accepted = publisher.publish(event(step))
    durations.append(time.perf_counter() - started)
    return accepted


# --- the spool on a full disk -------------------------------------------------------------


def test_a_failed_append_raises_and_takes_back_its_partial_write(disk) -> None:
    spool = Spool(disk.folder, JOB)
    spool.append([encode_event(event(s)) for s in range(5)])
    size = spool.path.stat().st_size
    disk.fill(leave_bytes=2000)  # room for part of the next batch only
    torn, take_back = [], spool._take_back
    spool._take_back = lambda at: torn.append(spool.path.stat().st_size) or take_back(at)

    with pytest.raises(OSError) as raised:
        spool.append([encode_event(event(s)) for s in range(5, 200)])

    assert raised.value.errno == errno.ENOSPC
    assert torn[0] > size  # part of the batch was written...
    assert spool.path.stat().st_size == size  # ...and cut off again: no torn line
    assert spool_steps(spool) == [0, 1, 2, 3, 4]
    disk.free()
    spool.append([encode_event(event(s)) for s in range(5, 8)])
    assert spool_steps(spool) == list(range(8))


def test_a_side_file_the_full_disk_refuses_is_kept_in_memory(disk) -> None:
    spool = Spool(disk.folder, JOB)
    spool.append([encode_event(event(s)) for s in range(10)])
    disk.fill()
    _, offset = spool.read_batch(4)

    spool.mark_delivered(offset)  # the side file cannot be written: no exception

    assert spool_steps(spool) == list(range(4, 10))  # this process does not send them again
    assert Spool(disk.folder, JOB).read_batch(100)[0]  # a restart sends from 0: at least once
    disk.free()
    spool.mark_delivered(spool.read_batch(100)[1])
    assert not spool.pending() and not spool.path.exists()


# --- the publisher on a full disk ----------------------------------------------------------


def test_full_disk_and_redis_down_keep_events_in_memory_and_flush_returns_at_once(
    server, disk, publishers
) -> None:
    publisher = publishers()
    disk.fill()
    server.connected = False
    durations: list[float] = []
    assert all(timed_publish(publisher, step, durations) for step in range(30))
    assert max(durations) < MAX_PUBLISH_S, f"slowest publish {max(durations) * 1000:.2f} ms"

    started = time.monotonic()
    assert publisher.flush(timeout_s=10) is False  # neither Redis nor the disk takes them
    assert time.monotonic() - started < 2.0, "flush waited for its timeout"
    assert publisher.pending_events == 30 and publisher.dropped == 0
    assert publisher._thread.is_alive()

    server.connected = True  # Redis returns: everything, in order, nothing reported lost
    assert publisher.flush(timeout_s=10)
    assert steps_of(stream(server)) == list(range(30)) and reports_of(stream(server)) == []


def test_memory_stays_bounded_and_the_oldest_are_dropped_counted_and_reported(
    server, disk, publishers
) -> None:
    limit = 40
    publisher = publishers(max_queue_events=limit, batch_max_events=10)
    disk.fill()
    server.connected = False
    peak, durations = 0, []
    for step in range(300):
        timed_publish(publisher, step, durations)
        peak = max(peak, publisher._in_memory())
        time.sleep(0.001)  # a training step
    assert peak <= limit
    assert max(durations) < MAX_PUBLISH_S
    assert publisher.dropped > 0
    started = time.monotonic()
    assert publisher.flush(timeout_s=10) is False and time.monotonic() - started < 2.0

    server.connected = True
    assert publisher.flush(timeout_s=10)
    delivered = stream(server)
    steps = steps_of(delivered)
    # The report comes first, with the count at that moment; then what was kept, in order.
    assert delivered[0].kind == "events_lost"
    assert reports_of(delivered) == [(publisher.instance, publisher.dropped)]
    assert steps == sorted(steps) and steps[-1] == 299 and steps[0] > 0  # the oldest went
    assert len(steps) + publisher.dropped == 300  # every event delivered or counted


@pytest.mark.parametrize(
    "error", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO], ids=errno.errorcode.get
)
def test_a_refusing_disk_that_recovers_takes_the_held_events_in_order(
    server, disk, publishers, error, caplog
) -> None:
    publisher = publishers()
    server.connected = False
    if error == errno.ENOSPC:
        disk.fill()
    else:
        disk.fail_with(error)  # a tmpfs can only fill up: the others are patched
    for step in range(20):
        assert publisher.publish(event(step))
    wait_for(lambda: publisher._stuck, what="the thread to find no place")
    disk.free()
    for step in range(20, 25):
        publisher.publish(event(step))

    assert publisher.flush(timeout_s=10)
    assert spool_steps(publisher.spool) == list(range(25)) and publisher.dropped == 0
    assert "round failed" not in caplog.text  # nothing escaped into the thread loop
    server.connected = True
    wait_for(lambda: len(stream(server)) == 25, what="the spool delivered")
    assert steps_of(stream(server)) == list(range(25))


def test_failures_are_logged_once_then_rarely(server, disk, publishers, caplog) -> None:
    caplog.set_level(logging.WARNING)
    publisher = publishers(max_queue_events=20, batch_max_events=5)
    disk.fill()
    server.connected = False
    for step in range(200):
        publisher.publish(event(step))
        time.sleep(0.001)
    wait_for(lambda: publisher.dropped > 0, what="drops")
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    drops = [r for r in caplog.records if "dropped so far" in r.getMessage()]
    assert len(refusals) == 1 and len(drops) == 1, [r.getMessage() for r in caplog.records]


def test_reports_are_cumulative_sent_ahead_and_once_per_growth(server, disk, publishers) -> None:
    # The thread sleeps (a long flush interval): the queue of 5 fills and refuses the rest.
    publisher = publishers(max_queue_events=5, flush_interval_ms=60_000)
    server.connected = False
    for step in range(8):
        publisher.publish(event(step))
    assert publisher.dropped == 3
    server.connected = True
    assert publisher.flush(timeout_s=10)
    for _ in range(5):  # more rounds, no new drop: no new report
        publisher._wake.set()
        time.sleep(0.02)
    for step in range(8, 16):
        publisher.publish(event(step))
    assert publisher.flush(timeout_s=10)

    delivered = stream(server)
    assert reports_of(delivered) == [(publisher.instance, 3), (publisher.instance, 6)]
    kinds = [e.kind for e in delivered]
    assert kinds[0] == "events_lost" and kinds[6] == "events_lost"  # ahead of the others
    assert steps_of(delivered) == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]


def test_close_on_a_full_disk_with_redis_down_counts_what_it_could_not_keep(
    server, disk, publishers, caplog
) -> None:
    publisher = publishers()
    disk.fill()
    server.connected = False
    for step in range(10):
        publisher.publish(event(step))

    started = time.monotonic()
    publisher.close(timeout_s=0.5)

    assert time.monotonic() - started < 3.0
    assert publisher.dropped == 10 and publisher.pending_events == 0
    assert "10 checkpoint events lost at close" in caplog.text
    assert not publisher.spool.path.exists() or spool_steps(publisher.spool) == []


def test_a_restart_delivers_the_spooled_report_and_adds_its_own(server, disk, publishers) -> None:
    first = publishers(max_queue_events=3, flush_interval_ms=60_000)
    server.connected = False
    for step in range(5):
        first.publish(event(step))  # 2 refused
    first.close(timeout_s=2.0)  # Redis down: events and report go to the spool
    server.connected = True
    second = publishers(max_queue_events=2, flush_interval_ms=60_000)
    for step in range(5, 9):
        second.publish(event(step))  # 2 refused
    assert second.flush(timeout_s=10)

    delivered = stream(server)
    assert sorted(reports_of(delivered)) == sorted([(first.instance, 2), (second.instance, 2)])
    assert fold(delivered).events_lost_total == 4


# --- the scorer: one count per publisher instance ------------------------------------------


def report(instance: str, lost: int, ts: float = 1.0, job: str = JOB) -> WireEvent:
    return WireEvent.model_validate(build_loss_report(job, instance, lost, ts=ts))


def test_duplicates_and_older_reports_change_nothing_and_instances_add_up() -> None:
    state = JobState(JOB)
    assert state.apply(report(A, 3))
    assert not state.apply(report(A, 3))  # the same report again (a redelivery)
    assert state.apply(report(A, 5))
    assert not state.apply(report(A, 4, ts=9.0))  # an older count arriving late
    assert state.apply(report(B, 2))
    assert state.events_lost == {A: 5, B: 2} and state.events_lost_total == 7
    assert not state.would_change(report(B, 1)) and state.would_change(report(B, 3))
    assert state.events_lost == {A: 5, B: 2}  # would_change leaves the state as it was


reports = st.lists(st.tuples(st.integers(0, 99), st.integers(0, 40)), min_size=1, max_size=200)


@hyp_settings(max_examples=150, deadline=None)
@given(sent=reports, data=st.data())
def test_the_kept_counts_depend_only_on_the_set_of_reports(sent, data) -> None:
    events = [report(f"{i:032x}", lost) for i, lost in sent]
    shuffled = data.draw(st.permutations(events + events[: data.draw(st.integers(0, 20))]))
    largest: dict[str, int] = {}
    for i, lost in sent:
        if lost:
            largest[f"{i:032x}"] = max(largest.get(f"{i:032x}", 0), lost)
    kept = sorted(largest.items(), key=lambda item: (item[1], item[0]))[-MAX_LOSS_REPORTERS:]

    assert fold(shuffled).events_lost == dict(kept) == fold(events).events_lost
    assert fold(shuffled).events_lost_total == sum(lost for _, lost in kept)


def test_states_stored_without_the_field_decode_with_no_losses() -> None:
    state = fold([begin(), train(10, 1.0), evaluation(10, 0.9)])
    state.summary = Summary.rebuild(state, DEFAULT_PROFILE)[0]
    head = json.loads(state.head_json())
    whole = json.loads(state.to_json())
    del head["events_lost"], whole["events_lost"]

    old_head = JobState.from_head(JOB, json.dumps(head))
    old_whole = JobState.from_json(json.dumps(whole))

    assert old_head.events_lost == {} == old_whole.events_lost
    assert job_row(old_head)["events_lost"] == 0
    state.apply(report(A, 4))
    again = JobState.from_head(JOB, state.head_json())
    assert again.events_lost == {A: 4} and JobState.from_json(state.to_json()).events_lost == {A: 4}


def test_a_report_is_no_training_fact_and_a_resume_does_not_drop_it() -> None:
    run = [begin(ts=0), train(10, 2.0, ts=1), evaluation(10, 1.9, ts=1), saved(10, [10], ts=1)]
    resumed = [begin(ts=5, resumed_from_step=0), train(10, 1.8, ts=6)]
    without = fold(run + resumed)
    with_report = fold([*run, report(A, 7, ts=2.0), *resumed])

    assert with_report.events_lost_total == 7  # the resume at ts 5 dropped records, not losses
    expected = job_row(without, Summary.rebuild(without, DEFAULT_PROFILE)[0])
    got = job_row(with_report, Summary.rebuild(with_report, DEFAULT_PROFILE)[0])
    assert got.pop("events_lost") == 7 and expected.pop("events_lost") == 0
    assert got == expected  # times, steps, picks: as if the report were not there


@pytest.mark.parametrize(
    "info",
    [
        {"instance": "A" * 32, "lost": 1},  # not lower-case hex
        {"instance": "a" * 31, "lost": 1},
        {"instance": A, "lost": -1},
        {"instance": A, "lost": True},
        {"instance": A, "lost": 2**31},  # more than a row holds
        {"instance": A},
        {},
    ],
)
def test_malformed_reports_are_dead_letters(info) -> None:
    text = json.dumps({**build_loss_report(JOB, A, 1, ts=1.0), "info": info})
    with pytest.raises(InvalidEvent):
        decode_event(text, JOB)


# --- the drain, the row, status ------------------------------------------------------------


def test_the_row_and_status_show_the_sum_of_the_reports(
    redis_client, pipeline_env, tmp_path
) -> None:
    SqliteWriter(pipeline_env.sink_url.removeprefix("sqlite:///")).create_job(JOB, "tok")
    register_job(redis_client, JOB, "tok")
    nothing_lost = pipeline_state(redis_client, JOB)
    assert nothing_lost["events_lost"] == 0 and "events_lost_note" not in nothing_lost
    events = [build_event("train_begin", JOB, 0, 0.0, info={"max_steps": 20}, ts=1.0)]
    events += [build_loss_report(JOB, A, 2, ts=2.0), build_loss_report(JOB, A, 2, ts=2.0)]
    events += [build_loss_report(JOB, B, 3, ts=3.0), build_loss_report(JOB, A, 1, ts=4.0)]
    events.append(build_event("train_log", JOB, 10, 0.5, {"loss": 1.5}, ts=5.0))
    for item in events:
        redis_client.xadd(keys.events(JOB), {EVENT_FIELD: encode_event(item)})

    run_all_in_one(redis_client, pipeline_env, burst=True)

    assert load_state(redis_client, JOB).events_lost == {A: 2, B: 3}
    row = SqliteWriter(pipeline_env.sink_url.removeprefix("sqlite:///")).read_job(JOB)
    assert row["events_lost"] == 5 and row["current_step"] == 10
    status = pipeline_state(redis_client, JOB)
    assert (
        status["events_lost"] == 5
        and "5 events of this job never reached" in status["events_lost_note"]
    )
    cli = [sys.executable, "-m", "ckpt_pipeline.cli", "status", JOB]
    shown = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    report_json = json.loads(shown.stdout)
    assert report_json["pipeline"]["events_lost"] == 5 == report_json["row"]["events_lost"]
    text = subprocess.run(cli, capture_output=True, text=True, timeout=60).stdout
    assert "events_lost" in text and "computed without them" in text


def test_an_older_sqlite_file_gets_the_column_not_null_default_0(tmp_path) -> None:
    path = tmp_path / "old.db"
    old_columns = [name for name in JOB_COLUMN_NAMES if name != "events_lost"]
    declared = [f'"{name}" {decl}' for name, decl in IDENTITY_COLUMNS]
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE local_training_jobs ({', '.join(declared + old_columns)})")
        conn.execute("INSERT INTO local_training_jobs (id, job_token, status) "
                     "VALUES ('old', 'tok', 'running')")  # fmt: skip
    writer = SqliteWriter(path)
    writer.ensure_schema()
    assert writer.read_job("old")["events_lost"] == 0
    with sqlite3.connect(path) as conn:
        info = {row[1]: row for row in conn.execute("PRAGMA table_info(local_training_jobs)")}
    assert info["events_lost"][3] == 1 and info["events_lost"][4] == "0"  # NOT NULL DEFAULT 0
