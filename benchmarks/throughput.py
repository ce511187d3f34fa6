"""Events/s from XADD to committed state and written rows, beside a raw pipelined XADD loop.

100 jobs x 1,000 events (``train_begin``, train logs with an eval every 10 steps,
``train_end``) are XADDed interleaved, in pipelined chunks of 1,000, while one pump, one
``rq worker scoring`` and one ``rq worker sink`` run. The clock stops when every job's
committed cursor is its last entry and its row is written (``written_version == version``).
The raw figure XADDs the same payloads to other keys, pipelined, against the same server,
once before the pipeline starts and once after it finished; the faster of the two counts.
"""

from __future__ import annotations

import bisect
import time
from typing import Any

from ckpt_pipeline.testing.convergence import last_entry_ids
from ckpt_pipeline.testing.events import JobEvents, xadd_all
from producer.wire import EVENT_FIELD
from scorer_worker.streams import stream_id_key

from .common import Context, Figure
from .pipeline import BenchPipeline, sqlite_reader

NAMES = ("events_per_s", "raw_xadd_per_s", "throughput_ratio")


def sizes(quick: bool) -> dict[str, Any]:
    """The group's sizes (the same in quick runs: the group takes a few seconds)."""
    return {"jobs": 100, "events_per_job": 1000, "timeout_s": 60 if quick else 300}


def run(ctx: Context) -> list[Figure]:
    """Measure the throughput figures at the group's sizes."""
    size = ctx.sizes["throughput"]
    got = measure(ctx, "throughput", size)
    ctx.details["throughput"] = got["details"]
    note = f"{size['jobs']} jobs x {size['events_per_job']:,} events, SQLite sink" + (
        "" if got["finished"] else f"; NOT caught up after {size['timeout_s']} s"
    )
    rate, raw = got["events_per_s"], got["raw_xadd_per_s"]
    return [
        Figure("events_per_s", rate, "ev/s", "info", None, note),
        Figure("raw_xadd_per_s", raw, "ev/s", "info", None, "same payloads, pipelined by 1,000"),
        Figure("throughput_ratio", rate / raw, "", ">=", 0.2, "events_per_s / raw_xadd_per_s"),
    ]


def measure(
    ctx: Context,
    name: str,
    size: dict[str, Any],
    *,
    data_url: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Publish ``size["jobs"]`` x ``size["events_per_job"]`` events and time them to rows.

    Args:
        ctx: the run.
        name: names the pipeline's folder.
        size: ``jobs``, ``events_per_job``, ``timeout_s``.
        data_url: the data side (a server or a cluster node), by default the queue side's.
        env: more environment for the pipeline's processes (e.g. ``CKPT_DATA_WAIT_REPLICAS``).

    Returns:
        ``events_per_s``, ``raw_xadd_per_s`` (the faster of before and after), ``finished``
        and ``details``.
    """
    jobs = [f"tp-{i:04d}" for i in range(size["jobs"])]
    streams = [(job, JobEvents(job).take(size["events_per_job"], end=True)) for job in jobs]
    total = sum(len(events) for _, events in streams)
    with BenchPipeline(ctx, name, scoring=1, sink=1, data_url=data_url, env=env) as pipeline:
        pipeline.register(jobs)
        raw_before = raw_xadd_rate(pipeline.data, streams)
        pipeline.start_processes()
        start = time.monotonic()
        ids = xadd_all(pipeline.data, streams)
        xadd_s = time.monotonic() - start
        last = last_entry_ids(jobs, ids)
        finished = True
        deadline = start + size["timeout_s"]
        while not pipeline.caught_up(last):
            if time.monotonic() > deadline:
                finished = False
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        committed = _committed(pipeline, jobs, ids) if not finished else total
        workers = pipeline.worker_stats(elapsed)
        raw_after = raw_xadd_rate(pipeline.data, streams)
        with sqlite_reader(pipeline.db_path) as conn:
            completed = conn.execute(
                "SELECT count(*) FROM local_training_jobs WHERE status = 'completed'"
            ).fetchone()[0]
    details = {
        "events": total,
        "finished": finished,
        "elapsed_s": round(elapsed, 2),
        "xadd_phase_s": round(xadd_s, 2),
        "raw_xadd_per_s_before_after": [round(raw_before), round(raw_after)],
        "rows_completed": completed,
        "workers": "1 pump, 1 rq worker scoring, 1 rq worker sink",
        "rq_workers": workers,
    }
    return {
        "events_per_s": committed / elapsed,
        "raw_xadd_per_s": max(raw_before, raw_after),
        "finished": finished,
        "details": details,
    }


def raw_xadd_rate(client: Any, streams: list[tuple[str, list[str]]], chunk: int = 1000) -> float:
    """XADD every payload to ``bench:raw:<job>`` keys, pipelined; return entries per second.

    ``client`` is the data side: on a cluster client the pipeline is split per node.
    """
    names = [f"bench:raw:{job}" for job, _ in streams]
    longest = max(len(events) for _, events in streams)
    start = time.monotonic()
    pipe = client.pipeline(transaction=False)
    queued = 0
    for index in range(longest):
        for name, (_, events) in zip(names, streams, strict=True):
            if index < len(events):
                pipe.xadd(name, {EVENT_FIELD: events[index]})
                queued += 1
                if queued % chunk == 0:
                    pipe.execute()
    pipe.execute()
    seconds = time.monotonic() - start
    client.delete(*names)
    return queued / seconds


def _committed(pipeline: BenchPipeline, jobs: list[str], ids: list[list[bytes]]) -> int:
    count = 0
    for job_ids, level in zip(ids, pipeline.job_levels(jobs), strict=True):
        if level.cursor:
            positions = [stream_id_key(i) for i in job_ids]
            count += bisect.bisect_right(positions, stream_id_key(level.cursor))
    return count
