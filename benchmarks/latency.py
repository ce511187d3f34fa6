"""Latency from an eval event's XADD to the job's row showing it, at 1,000 events/s.

A load generator process publishes 1,000 events/s in total over 20 jobs (50 steps/s each:
train logs, an eval every 100th step, so each job evaluates every 2 s). Each eval's
``eval_loss`` encodes its index, so the harness, which reads the SQLite rows every 5 ms,
knows which eval a row shows. An eval's latency is from its
XADD (the server clock in its entry id) to the first read that shows it or a later eval of
the same job (a flush that writes two evals updates the row for both). The time to the
committed state (keyspace notifications, as in ``fanout``) is shown beside it, which splits
the latency between the scoring side and the sink side.
"""

from __future__ import annotations

import time
from typing import Any

from ckpt_pipeline.testing.convergence import entry_seconds

from .common import Context, Figure, percentile
from .pipeline import BenchPipeline, finish_loadgen, sqlite_reader, start_loadgen
from .watch import CommitWatcher, command_delta, command_stats

NAMES = ("latency_p50_ms", "latency_p99_ms")
POLL_S = 0.005


def sizes(quick: bool) -> dict[str, Any]:
    """The group's sizes: 15 s of load in a quick run, 45 s in a full one."""
    return {"jobs": 20, "events_per_s": 1000, "duration_s": 15 if quick else 45, "eval_every": 100}


def run(ctx: Context) -> list[Figure]:
    """Measure the latency figures at the group's sizes."""
    got = measure(ctx, "latency", ctx.sizes["latency"])
    ctx.details["latency"] = got["details"]
    ms, note = got["ms"], got["note"]
    return [
        Figure("latency_p50_ms", percentile(ms, 50), "ms", "info", None, note),
        Figure("latency_p99_ms", percentile(ms, 99), "ms", "<=", 250, note),
    ]


def measure(
    ctx: Context,
    name: str,
    size: dict[str, Any],
    *,
    data_url: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the paced load and time each eval from its XADD to its row.

    Args:
        ctx: the run.
        name: names the pipeline's folder.
        size: ``jobs``, ``events_per_s``, ``duration_s``, ``eval_every``.
        data_url: the data side (a server or a cluster node, its servers notifying keyspace
            events), by default the queue side's.
        env: more environment for the pipeline's processes (e.g. ``CKPT_DATA_WAIT_REPLICAS``).

    Returns:
        ``ms`` (each eval's latency, inf for one never shown), ``to_commit_ms`` (XADD to
        committed state), ``note`` and ``details``.
    """
    jobs = [f"lat-{i:03d}" for i in range(size["jobs"])]
    seen: dict[str, list[tuple[float, int]]] = {job: [] for job in jobs}
    redis_args = ["--notify-keyspace-events", "KA"]
    with BenchPipeline(ctx, name, redis_args=redis_args, data_url=data_url, env=env) as pipeline:
        pipeline.register(jobs)
        pipeline.start_processes()
        watcher = CommitWatcher(data_url or pipeline.url, jobs)
        watcher.start()
        commands_before = command_stats(pipeline.servers())
        started = time.monotonic()
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
        watcher.stop()
        commands = command_delta(
            commands_before, command_stats(pipeline.servers()), summary["sent"]
        )
        workers = pipeline.worker_stats(time.monotonic() - started)
    lags = []
    for job, events in summary["records"].items():
        shown = seen[job]
        for index, (_kind, _step, entry_id) in enumerate(events, start=1):
            when = next((t for t, k in shown if k >= index), None)
            lags.append(float("inf") if when is None else max(0.0, when - entry_seconds(entry_id)))
    ms = [lag * 1000 for lag in lags]
    missing = sum(1 for lag in lags if lag == float("inf"))
    to_commit = [lag * 1000 for lag in watcher.lags(summary["records"])]
    details = {
        "events_published": summary["sent"],
        "publish_rate_per_s": round(summary["rate"]),
        "evals_measured": len(ms),
        "evals_never_shown": missing,
        "p50_p90_p99_max_ms": [round(percentile(ms, q), 1) for q in (50, 90, 99, 100)],
        "xadd_to_commit_p50_p90_p99_max_ms": [
            round(percentile(to_commit, q), 1) for q in (50, 90, 99, 100)
        ],
        **commands,
        "rq_workers": workers,
    }
    note = (
        f"{len(ms):,} evals over {len(jobs)} jobs at {round(summary['rate']):,} events/s, "
        f"SQLite row read every {POLL_S * 1000:.0f} ms"
    )
    return {"ms": ms, "to_commit_ms": to_commit, "note": note, "details": details}


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
