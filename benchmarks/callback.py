"""Time spent in the training thread per ``on_log`` call, Redis up and down; the old way.

``CheckpointEventsCallback.on_log`` is called as the Trainer calls it (a fresh ``logs`` dict,
a real ``TrainerState``), each call timed with ``perf_counter_ns``, one call per millisecond
(far more often than any real logging) so the publisher's thread works as it would in a run.
Then the private ``redis-server`` is stopped and the same is measured again. The old cloud
callback's way is a synchronous HTTP write per log call against a local HTTP server (a
separate process) that answers after 50 ms.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ckpt_pipeline.testing.convergence import wait_until

from .common import Context, Figure, percentile

NAMES = (
    "callback_median_us",
    "callback_p99_us",
    "callback_redis_down_p99_us",
    "sync_post_median_us",
)
JOB = "bench-callback"
PACE_S = 0.001


def sizes(quick: bool) -> dict[str, Any]:
    return {"calls": 3000 if quick else 20000, "sync_posts": 20 if quick else 100}


def run(ctx: Context) -> list[Figure]:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from producer import CheckpointEventsCallback, EventPublisher

    size = ctx.sizes["callback"]
    folder = ctx.folder("callback")
    server = ctx.start_redis("callback")
    args = TrainingArguments(output_dir=str(folder / "out"), report_to=[], use_cpu=True)
    control = TrainerControl()
    state = TrainerState(max_steps=10**7, num_train_epochs=10, logging_steps=1)
    publisher = EventPublisher(JOB, server.url, spool_dir=folder / "spool")
    callback = CheckpointEventsCallback(JOB, publisher=publisher)
    try:
        timed_calls(callback, args, state, control, 500)  # warm up: connection, imports, caches
        publisher.flush(10)
        up = timed_calls(callback, args, state, control, size["calls"])
        if not publisher.flush(30):
            raise RuntimeError("the publisher did not deliver the events")
        delivered = server_xlen(server.url)
        ctx.stop_redis(server)
        down = timed_calls(callback, args, state, control, size["calls"])
        publisher.flush(30)
        spooled = publisher.spooled
    finally:
        publisher.close(5)
    sync = _sync_posts(ctx, size["sync_posts"])
    ctx.details["callback"] = {
        "events_delivered_redis_up": delivered,
        "events_spooled_redis_down": spooled,
        "dropped": publisher.dropped,
        "up_p50_p90_p99_p999_max_us": _spread(up),
        "down_p50_p90_p99_p999_max_us": _spread(down),
        "sync_post_p50_p99_ms": [
            round(percentile(sync, 50) / 1000, 2),
            round(percentile(sync, 99) / 1000, 2),
        ],
    }
    note = f"{len(up):,} calls, 1 per ms"
    median = percentile(up, 50)
    return [
        Figure("callback_median_us", median, "µs", "<=", 20, note),
        Figure("callback_p99_us", percentile(up, 99), "µs", "<=", 200, note),
        Figure("callback_redis_down_p99_us", percentile(down, 99), "µs", "<=", 200,
               f"{len(down):,} calls, redis-server stopped, {spooled:,} events spooled"),
        Figure("sync_post_median_us", percentile(sync, 50), "µs", "info", None,
               f"{len(sync)} POSTs, server answers in 50 ms; "
               f"{percentile(sync, 50) / median:,.0f}x the callback's median"),
    ]  # fmt: skip


def timed_calls(
    callback, args, state, control, count: int, started_at: list[float] | None = None
) -> list[float]:
    """Call ``on_log`` ``count`` times, one per ms; return each call's µs (and, into
    ``started_at``, each call's wall-clock start: the network experiment splits by phase)."""
    times = []
    perf = time.perf_counter_ns
    next_at = time.perf_counter()
    for _ in range(count):
        state.global_step += 1
        state.epoch = state.global_step / 500
        step = state.global_step
        logs = {
            "loss": 2.5 - step * 1e-6,
            "grad_norm": 1.3,
            "learning_rate": 5e-4,
            "epoch": state.epoch,
        }
        if started_at is not None:
            started_at.append(time.time())
        start = perf()
        callback.on_log(args, state, control, logs=logs)
        times.append((perf() - start) / 1000)
        next_at += PACE_S
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return times


def _spread(values: list[float]) -> list[float]:
    return [round(percentile(values, q), 1) for q in (50, 90, 99, 99.9, 100)]


def server_xlen(url: str) -> int:
    import redis

    from producer.wire import stream_key

    with redis.Redis.from_url(url) as client:
        return int(client.xlen(stream_key(JOB)))


def _sync_posts(ctx: Context, count: int) -> list[float]:
    """The old way: one synchronous HTTP write per log call (keep-alive, like supabase-py)."""
    import httpx

    from ckpt_pipeline.testing.local_redis import free_port

    port = free_port()
    server = ctx.spawn([sys.executable, "-m", "benchmarks.slow_http", str(port), "50"], "slow-http")
    try:
        url = f"http://127.0.0.1:{port}/rest/v1/local_training_jobs"
        with httpx.Client(timeout=10) as client:

            def answers() -> bool:
                try:
                    client.get(url)
                    return True
                except httpx.TransportError:
                    return False

            wait_until(answers, 10, 0.05, "the slow HTTP server")
            times = []
            for step in range(count):
                row = {"current_step": step, "loss": 2.5, "learning_rate": 5e-4, "grad_norm": 1.3}
                start = time.perf_counter_ns()
                client.patch(url, params={"id": "eq.job"}, json=row).raise_for_status()
                times.append((time.perf_counter_ns() - start) / 1000)
        return times
    finally:
        ctx.stop(server)
