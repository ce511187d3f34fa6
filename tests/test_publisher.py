"""EventPublisher and Spool against a real, private redis-server (DESIGN sections 3 and 6).

Nothing is mocked: "Redis unreachable" is a closed port, "Redis stopped" is a redis-server
process stopped and restarted on the same port, and "Redis hangs" is a listening socket that
never answers.
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ckpt_pipeline.testing.local_redis import LocalRedis, free_port
from producer import EventPublisher
from producer.events import build_event, encode_event
from producer.spool import Spool
from producer.wire import EVENT_FIELD, MAX_EVENT_BYTES, stream_key
from scorer_worker.models import decode_event

JOB = "pub-job"
MAX_PUBLISH_S = 0.005


def wait_for(condition: Callable[[], object], timeout_s: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what or condition}")
        time.sleep(0.005)


def event(step: int, kind: str = "train_log", job: str = JOB) -> dict:
    metrics = {"loss": 1.0 / (step + 1), "learning_rate": 1e-3} if kind == "train_log" else {}
    return build_event(kind, job, step, epoch=step / 10, metrics=metrics)


def closed_url() -> str:
    """URL of a port nothing listens on: connections are refused at once."""
    return f"redis://127.0.0.1:{free_port()}/0"


def stream_raw(client: redis.Redis, job: str = JOB) -> list[bytes]:
    """The ``event`` payloads of a job's stream, in stream order.

    Asserts every entry has exactly one field, named ``event``.
    """
    payloads = []
    for _entry_id, fields in client.xrange(stream_key(job)):
        assert list(fields) == [EVENT_FIELD.encode()], fields
        payloads.append(fields[EVENT_FIELD.encode()])
    return payloads


def stream_steps(client: redis.Redis, job: str = JOB) -> list[int]:
    """Steps of the job's stream entries, each validated by the schema of record."""
    return [decode_event(raw, job).step for raw in stream_raw(client, job)]


def spool_steps(spool: Spool) -> list[int]:
    if not spool.path.exists():
        return []
    lines = spool.path.read_text(encoding="utf-8").splitlines()
    return [decode_event(line, spool.path.name.split(".")[0]).step for line in lines]


@pytest.fixture
def publishers() -> Iterator[Callable[..., EventPublisher]]:
    """Factory of publishers that are all closed when the test ends (no leaked threads)."""
    made: list[EventPublisher] = []

    def make(*args, **kwargs) -> EventPublisher:
        publisher = EventPublisher(*args, **kwargs)
        made.append(publisher)
        return publisher

    yield make
    for publisher in made:
        publisher.close(timeout_s=2.0)


def timed_publish(publisher: EventPublisher, ev: dict, durations: list[float]) -> bool:
    start = time.perf_counter()
    accepted = publisher.publish(ev)
    durations.append(time.perf_counter() - start)
    return accepted


@pytest.mark.parametrize("batch_max_events", [7, 500])
def test_events_arrive_in_publish_order_with_one_event_field(
    redis_client: redis.Redis,
    redis_server: LocalRedis,
    tmp_path: Path,
    publishers,
    batch_max_events,
) -> None:
    publisher = publishers(
        JOB, redis_server.url, spool_dir=tmp_path / "spool", batch_max_events=batch_max_events
    )
    kinds = ["train_begin", "train_log", "eval", "checkpoint_saved", "train_end"]
    for step in range(60):
        kind = kinds[step % len(kinds)]
        info = {"checkpoint": f"checkpoint-{step}", "retained": []} if kind == kinds[3] else None
        assert publisher.emit(kind, step, step / 10, {"loss": 0.5}, info)

    wait_for(lambda: redis_client.xlen(stream_key(JOB)) >= 60, what="60 entries in the stream")
    publisher.close(timeout_s=5.0)

    raws = stream_raw(redis_client)
    decoded = [decode_event(raw, JOB) for raw in raws]
    assert [e.step for e in decoded] == list(range(60))
    assert [e.kind for e in decoded] == [kinds[s % 5] for s in range(60)]
    assert publisher.sent == 60 and publisher.spooled == 0 and publisher.dropped == 0
    assert not publisher.spool.path.exists()


def test_emit_builds_off_the_training_thread_from_a_copy_and_drops_unbuildable_events(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path, publishers
) -> None:
    publisher = publishers(JOB, redis_server.url, spool_dir=tmp_path / "spool")
    metrics = {"loss": 0.5}
    before = time.time()
    assert publisher.emit("train_log", 1, 0.1, metrics)
    metrics["loss"] = 99.0  # changed after the call: the queued event keeps the old value
    assert publisher.emit("no_such_kind", 2, 0.2, {"loss": 0.1})  # queued; built later
    assert publisher.emit("train_log", -3, 0.3, {"loss": 0.1})  # negative step
    publisher.close(timeout_s=5.0)
    event, *reports = [decode_event(raw, JOB) for raw in stream_raw(redis_client)]
    assert event.metrics == {"loss": 0.5} and before <= event.ts <= time.time()
    assert publisher.dropped == 2 and publisher.sent == 1
    # The two that could not be built are lost events too: the scorer is told.
    assert [(r.kind, r.info.lost) for r in reports] == [("events_lost", 2)]


def test_unreachable_redis_spools_then_a_new_publisher_delivers_spool_first(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path, publishers
) -> None:
    spool_dir = tmp_path / "spool"
    down = publishers(JOB, closed_url(), spool_dir=spool_dir)
    durations: list[float] = []
    for step in range(20):
        assert timed_publish(down, event(step), durations)
    started = time.monotonic()
    down.close(timeout_s=5.0)
    assert time.monotonic() - started < 5.0
    assert max(durations) < MAX_PUBLISH_S, f"slowest publish {max(durations) * 1000:.2f} ms"
    assert down.pending_events == 0 and down.sent == 0
    assert spool_steps(down.spool) == list(range(20))

    # A restarted process: same job and spool folder, Redis now reachable.
    up = publishers(JOB, redis_server.url, spool_dir=spool_dir)
    for step in range(20, 25):
        assert up.publish(event(step))
    wait_for(lambda: redis_client.xlen(stream_key(JOB)) >= 25, what="25 entries")
    up.close(timeout_s=5.0)

    assert stream_steps(redis_client) == list(range(25))
    assert not up.spool.path.exists()
    assert list(spool_dir.iterdir()) == []  # the offset side file is gone too


def test_redis_outage_mid_run_keeps_order_and_never_blocks_publish(
    tmp_path: Path, publishers
) -> None:
    # AOF on: the restarted server still holds what was delivered before it stopped.
    server = LocalRedis(tmp_path / "redis", appendonly=True, port=free_port()).start()
    client = redis.Redis.from_url(server.url)
    try:
        publisher = publishers(JOB, server.url, spool_dir=tmp_path / "spool", retry_max_s=0.2)
        durations: list[float] = []

        def train_steps(steps: range) -> None:
            for step in steps:
                assert timed_publish(publisher, event(step), durations)
                time.sleep(0.001)  # the training step between two logs, not a wait

        train_steps(range(30))
        wait_for(lambda: client.xlen(stream_key(JOB)) == 30, what="events before the outage")

        server.stop()
        train_steps(range(30, 60))
        wait_for(lambda: publisher.spooled == 30, what="outage events to reach the spool")
        assert publisher.pending_events == 0

        server.start()
        train_steps(range(60, 90))
        wait_for(lambda: client.xlen(stream_key(JOB)) >= 90, what="all 90 events")
        publisher.close(timeout_s=5.0)

        # No duplicates in this run: the server was stopped while no XADD was in flight, so
        # every XADD either failed whole or succeeded whole.
        assert stream_steps(client) == list(range(90))
        assert publisher.sent == 90
        assert not publisher.spool.path.exists()
        assert max(durations) < MAX_PUBLISH_S, f"slowest publish {max(durations) * 1000:.2f} ms"
    finally:
        client.close()
        server.stop()


def test_close_hands_queued_events_to_redis(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path, publishers
) -> None:
    # A long flush interval keeps the thread asleep, so events are still queued at close().
    publisher = publishers(
        JOB, redis_server.url, spool_dir=tmp_path / "spool", flush_interval_ms=60_000
    )
    for step in range(100):
        publisher.publish(event(step))
    assert publisher.pending_events == 100
    assert redis_client.xlen(stream_key(JOB)) == 0

    publisher.close(timeout_s=5.0)

    assert publisher.pending_events == 0
    assert stream_steps(redis_client) == list(range(100))
    assert not publisher.publish(event(100))  # closed: refused, counted, no exception
    assert publisher.dropped == 1


def test_close_spools_queued_events_when_redis_is_unreachable(tmp_path: Path, publishers) -> None:
    publisher = publishers(
        JOB, closed_url(), spool_dir=tmp_path / "spool", flush_interval_ms=60_000
    )
    for step in range(100):
        publisher.publish(event(step))
    assert publisher.pending_events == 100

    publisher.close(timeout_s=5.0)

    assert publisher.pending_events == 0
    assert spool_steps(publisher.spool) == list(range(100))


def test_close_with_a_hung_redis_leaves_nothing_in_memory(tmp_path: Path, publishers) -> None:
    # A socket that accepts connections and never answers: XADD hangs until socket_timeout.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        url = f"redis://127.0.0.1:{hole.getsockname()[1]}/0"
        publisher = publishers(
            JOB, url, spool_dir=tmp_path / "spool", batch_max_events=10, socket_timeout_s=0.5
        )
        for step in range(100):
            publisher.publish(event(step))
        wait_for(lambda: publisher.pending_events <= 90, what="the thread to take a batch")

        publisher.close(timeout_s=0.2)

        # Everything published before close() is in Redis or the spool, in publish order.
        assert spool_steps(publisher.spool) == list(range(100))


def test_bounded_queue_drops_and_counts_instead_of_growing(tmp_path: Path, publishers) -> None:
    # Redis unreachable and the thread asleep (long flush interval): nothing drains the queue.
    publisher = publishers(
        JOB,
        closed_url(),
        spool_dir=tmp_path / "spool",
        max_queue_events=10,
        flush_interval_ms=60_000,
    )
    durations: list[float] = []
    accepted = [timed_publish(publisher, event(step), durations) for step in range(25)]

    assert accepted == [True] * 10 + [False] * 15
    assert publisher.dropped == 15
    assert publisher.pending_events == 10
    assert max(durations) < MAX_PUBLISH_S

    publisher.close(timeout_s=5.0)
    # Then the report of the 15 dropped, spooled too (Redis is unreachable at close).
    assert spool_steps(publisher.spool) == [*range(10), 0]
    report = decode_event(publisher.spool.read_batch(100)[0][-1], JOB)
    assert (report.kind, report.info.lost) == ("events_lost", 15)


def test_nan_and_infinities_travel_as_strings(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path, publishers
) -> None:
    publisher = publishers(JOB, redis_server.url, spool_dir=tmp_path / "spool")
    metrics = {
        "loss": math.nan,
        "grad_norm": math.inf,
        "learning_rate": -math.inf,
        "eval_loss": 0.25,
        "missing": None,
    }
    assert publisher.emit("eval", 5, 1.0, metrics)
    publisher.close(timeout_s=5.0)

    [raw] = stream_raw(redis_client)
    text = raw.decode("utf-8")
    assert "NaN" not in text and "Infinity" not in text

    def strict(name: str) -> None:
        raise AssertionError(f"bare {name} in the wire JSON")

    payload = json.loads(text, parse_constant=strict)
    assert payload["metrics"] == {
        "loss": "nan",
        "grad_norm": "inf",
        "learning_rate": "-inf",
        "eval_loss": 0.25,
        "missing": None,
    }
    decoded = decode_event(raw, JOB)
    assert math.isnan(decoded.metrics["loss"])
    assert decoded.metrics["grad_norm"] == math.inf
    assert decoded.metrics["learning_rate"] == -math.inf


def big_checkpoint_event(n_retained: int) -> dict:
    retained = [f"checkpoint-{step}" for step in range(1, n_retained + 1)]
    info = {"checkpoint": f"checkpoint-{n_retained}", "retained": retained}
    return build_event("checkpoint_saved", JOB, n_retained, 3.0, {"x": 1.5}, info, ts=12.5)


def test_oversize_info_is_truncated_under_64_kib(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path, publishers
) -> None:
    ev = big_checkpoint_event(6000)
    assert len(json.dumps(ev).encode()) > MAX_EVENT_BYTES

    text = encode_event(ev)

    assert len(text.encode("utf-8")) <= MAX_EVENT_BYTES
    payload = json.loads(text)
    info = payload["info"]
    assert info["truncated"] is True and info["checkpoint"] == "checkpoint-6000"
    assert 0 < len(info["retained"]) < 6000
    assert info["retained"] == ev["info"]["retained"][-len(info["retained"]) :]  # newest kept
    assert {k: payload[k] for k in ("v", "job_id", "kind", "step", "epoch", "ts", "metrics")} == {
        "v": 1,
        "job_id": JOB,
        "kind": "checkpoint_saved",
        "step": 6000,
        "epoch": 3.0,
        "ts": 12.5,
        "metrics": {"x": 1.5},
    }

    # Through the publisher, the oversize event still reaches the stream, under the limit.
    publisher = publishers(JOB, redis_server.url, spool_dir=tmp_path / "spool")
    assert publisher.publish(ev)
    publisher.close(timeout_s=5.0)
    [raw] = stream_raw(redis_client)
    assert len(raw) <= MAX_EVENT_BYTES
    assert publisher.dropped == 0


def test_event_of_exactly_64_kib_is_kept_whole() -> None:
    def with_pad(n: int) -> dict:
        info = {"status": "failed", "error": "x" * n}
        return build_event("train_end", JOB, 1, info=info, ts=12.5)

    base = len(encode_event(with_pad(0)).encode())
    exact = with_pad(MAX_EVENT_BYTES - base)
    assert len(encode_event(exact).encode()) == MAX_EVENT_BYTES
    assert json.loads(encode_event(exact))["info"] == exact["info"]
    cut = json.loads(encode_event(with_pad(MAX_EVENT_BYTES - base + 1)))["info"]
    assert cut["truncated"] is True and cut["status"] == "failed"
    assert cut["error"].startswith("xxx") and len(cut["error"]) < MAX_EVENT_BYTES - base


def test_truncated_checkpoint_event_still_validates() -> None:
    text = encode_event(big_checkpoint_event(6000))
    decoded = decode_event(text, JOB)
    assert decoded.info.checkpoint == "checkpoint-6000"


# --- Spool -------------------------------------------------------------------------------------


def lines(steps: range) -> list[str]:
    return [encode_event(event(step)) for step in steps]


def test_spool_does_not_read_a_torn_last_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path, JOB)
    spool.append(lines(range(2)))
    complete_bytes = spool.path.stat().st_size
    with open(spool.path, "a", encoding="utf-8") as handle:  # crash in the middle of an append
        handle.write(encode_event(event(2))[:25])

    events, offset = Spool(tmp_path, JOB).read_batch(100)

    assert [decode_event(text, JOB).step for text in events] == [0, 1]
    assert offset == complete_bytes


def test_spool_appends_after_a_torn_line_are_delivered_intact(tmp_path: Path) -> None:
    spool = Spool(tmp_path, JOB)
    spool.append(lines(range(2)))
    with open(spool.path, "a", encoding="utf-8") as handle:  # crash in the middle of an append
        handle.write(encode_event(event(2))[:25])

    restarted = Spool(tmp_path, JOB)  # the next process appends new events
    restarted.append(lines(range(3, 5)))
    events, _ = restarted.read_batch(100)

    assert [decode_event(text, JOB).step for text in events] == [0, 1, 3, 4]


def test_spool_offsets_survive_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path, JOB)
    spool.append(lines(range(5)))
    first, offset = spool.read_batch(2)
    assert [decode_event(t, JOB).step for t in first] == [0, 1]
    spool.mark_delivered(offset)

    reopened = Spool(tmp_path, JOB)
    assert reopened.pending()
    rest, end = reopened.read_batch(100)
    assert [decode_event(t, JOB).step for t in rest] == [2, 3, 4]
    reopened.mark_delivered(end)

    assert not reopened.pending()
    assert list(tmp_path.iterdir()) == []
    assert Spool(tmp_path, JOB).read_batch(100) == ([], 0)


def test_spool_crash_while_removing_a_delivered_spool_skips_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, JOB)
    spool.append(lines(range(4)))
    _, offset = spool.read_batch(2)
    spool.mark_delivered(offset)  # the offset side file now exists
    spool.read_batch(100)
    # mark_delivered(end) unlinks the spool, then the offset file: the process dies between.
    spool.path.unlink()

    restarted = Spool(tmp_path, JOB)
    restarted.append(lines(range(10, 12)))
    events, _ = restarted.read_batch(100)

    assert [decode_event(t, JOB).step for t in events] == [10, 11]
