"""Latency from an eval event's XADD to the job's row showing it, at 1,000 events/s.

A load generator process publishes 1,000 events/s in total over ``jobs`` jobs (train logs,
an eval every 10th step). Each eval's ``eval_loss`` encodes its index, so the harness, which
reads the SQLite rows every 5 ms, knows which eval a row shows. An eval's latency is from its
XADD (the server clock in its entry id) to the first read that shows it or a later eval of
the same job (a flush that writes two evals updates the row for both).
"""

from __future__ import annotations

import time
from typing import Any

from .common import (
    Context,
    Figure,
    Pipeline,
    entry_seconds,
    finish_loadgen,
    percentile,
    sqlite_reader,
    start_loadgen,
)

NAMES = ("latency_p50_ms", "latency_p99_ms")
POLL_S = 0.005


def sizes(quick: bool) -> dict[str, Any]:
    return {"jobs": 20, "events_per_s": 1000, "duration_s": 10 if quick else 30, "eval_every": 10}


def run(ctx: Context) -> list[Figure]:
    size = ctx.sizes["latency"]
    jobs = [f"lat-{i:03d}" for i in range(size["jobs"])]
    seen: dict[str, list[tuple[float, int]]] = {job: [] for job in jobs}
    with Pipeline(ctx, "latency") as pipeline:
        pipeline.register(jobs)
        pipeline.start_processes()
        process, output = start_loadgen(
            ctx, pipeline, "loadgen", jobs=jobs, rate_per_job=size["events_per_s"] / len(jobs),
            duration_s=size["duration_s"], record="eval", eval_every=size["eval_every"],
        )  # fmt: skip
        with sqlite_reader(pipeline.db_path) as conn:
            deadline = time.monotonic() + size["duration_s"] + 60
            while process.poll() is None and time.monotonic() < deadline:
                _poll(conn, seen)
                time.sleep(POLL_S)
            summary = finish_loadgen(ctx, process, output, 5)
            wait_end = time.monotonic() + 10
            while time.monotonic() < wait_end and not _all_seen(seen, summary["records"]):
                pipeline.check_alive()
                _poll(conn, seen)
                time.sleep(POLL_S)
    lags = []
    for job, events in summary["records"].items():
        shown = seen[job]
        for index, (_kind, _step, entry_id) in enumerate(events, start=1):
            when = next((t for t, k in shown if k >= index), None)
            lags.append(float("inf") if when is None else max(0.0, when - entry_seconds(entry_id)))
    ms = [lag * 1000 for lag in lags]
    missing = sum(1 for lag in lags if lag == float("inf"))
    ctx.details["latency"] = {
        "events_published": summary["sent"],
        "publish_rate_per_s": round(summary["rate"]),
        "evals_measured": len(ms),
        "evals_never_shown": missing,
        "p50_p90_p99_max_ms": [round(percentile(ms, q), 1) for q in (50, 90, 99, 100)],
    }
    note = (
        f"{len(ms):,} evals over {len(jobs)} jobs at {round(summary['rate']):,} events/s, "
        f"SQLite row read every {POLL_S * 1000:.0f} ms"
    )
    return [
        Figure("latency_p50_ms", percentile(ms, 50), "ms", "info", None, note),
        Figure("latency_p99_ms", percentile(ms, 99), "ms", "<=", 250, note),
    ]


def _poll(conn, seen: dict[str, list[tuple[float, int]]]) -> None:
    rows = conn.execute("SELECT id, eval_loss FROM local_training_jobs").fetchall()
    now = time.time()
    for job_id, eval_loss in rows:
        if eval_loss is None or job_id not in seen:
            continue
        index = round((eval_loss - 2.0) * 10000)
        history = seen[job_id]
        if not history or index > history[-1][1]:
            history.append((now, index))


def _all_seen(seen: dict[str, list[tuple[float, int]]], records: dict[str, list]) -> bool:
    return all(seen[job] and seen[job][-1][1] >= len(events) for job, events in records.items())
