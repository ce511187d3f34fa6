"""Fan-out: many registered jobs each publishing one event per second; lag to committed state.

All jobs are registered (and have rows) before a load generator process publishes one event
per job per second, spread evenly, for the run's duration. The lag of an event is the time
from its XADD (the server clock in its entry id) to the first moment its job's committed
cursor is seen at or past it. Commits are seen through keyspace notifications on the job's
``state`` and ``meta`` keys, for a sample of the jobs; on each notification the cursor is
read, and the time after that read is the commit time (so a lag is never under-stated by
more than the read, about a millisecond). Events not committed when the run ends count as
infinitely late.

Beside the lag, the details give what the scaling plan (docs/scaling.md) is computed from:
the CPU time each role used per event published (the Procfile's processes, the Redis
servers, the load generator), how often the sampled jobs' rows were written, and the time
of one pump pass over all the jobs once the load has ended.
"""

from __future__ import annotations

import time
from typing import Any

from scorer_worker.pump import Pump
from scorer_worker.settings import Settings

from .common import FANOUT_SCORING_WORKERS, Context, Figure, percentile
from .pipeline import BenchPipeline, cpu_by_role, cpu_seconds, finish_loadgen, start_loadgen
from .watch import CommitWatcher, command_delta, command_stats

NAMES = ("fanout_jobs", "fanout_lag_p99_s")
FULL_JOBS = 10_000


def sizes(quick: bool) -> dict[str, Any]:
    """The group's sizes: 1,000 jobs for 20 s in a quick run, 10,000 for 60 s in a full one."""
    if quick:
        return {"jobs": 1000, "events_per_job_per_s": 1, "duration_s": 20, "sample_jobs": 200}
    return {"jobs": FULL_JOBS, "events_per_job_per_s": 1, "duration_s": 60, "sample_jobs": 500}


# When the lag target is missed at the full count, smaller counts are measured (30 s each)
# to report the largest count that holds it on this machine.
LADDER = (5_000, 2_500, 1_000)
LADDER_DURATION_S = 30


def run(ctx: Context) -> list[Figure]:
    """Measure the fan-out figures; below the full count when the full count misses."""
    size = ctx.sizes["fanout"]
    jobs_count = size["jobs"]
    p99, details, note = measure(ctx, jobs_count, size["duration_s"], size["sample_jobs"])
    ctx.details["fanout"] = details
    target_jobs = jobs_count if ctx.quick else FULL_JOBS
    reached = jobs_count if p99 <= 2.0 else 0
    if not ctx.quick and not reached:
        ladder = {}
        for count in LADDER:
            rung_p99, _, _ = measure(ctx, count, LADDER_DURATION_S, min(500, count))
            ladder[f"{count:,} jobs"] = round(rung_p99, 3)
            if rung_p99 <= 2.0:
                reached = count
                break
        details["smaller_counts_lag_p99_s"] = ladder
    jobs_note = "the largest count measured whose lag p99 met the target"
    if ctx.quick:
        jobs_note += f" (quick run: {jobs_count:,}, full: {FULL_JOBS:,})"
    elif reached < jobs_count:
        jobs_note += f" ({LADDER_DURATION_S} s runs below {jobs_count:,}; see details)"
    jobs_figure = Figure("fanout_jobs", reached, "jobs", ">=", target_jobs, jobs_note)
    jobs_figure.verdict = reached >= target_jobs
    return [jobs_figure, Figure("fanout_lag_p99_s", p99, "s", "<=", 2, note)]


def measure(
    ctx: Context,
    jobs_count: int,
    duration_s: int,
    sample_jobs: int,
    *,
    name: str = "fanout",
    data_url: str | None = None,
    data_pids: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[float, dict[str, Any], str]:
    """Run ``jobs_count`` jobs for ``duration_s``; return lag p99, details and a note.

    Args:
        ctx: the run.
        jobs_count: registered jobs, each publishing ``events_per_job_per_s``.
        duration_s: how long the load lasts.
        sample_jobs: the jobs whose events' lags are measured.
        name: names the pipeline's folder.
        data_url: the data side (a server or a cluster node, its servers notifying keyspace
            events), by default the queue side's.
        data_pids: the data side's servers by name, for the CPU time per role.
        env: more environment for the pipeline's processes.
    """
    rate = ctx.sizes.get("fanout", {}).get("events_per_job_per_s", 1)
    jobs = [f"fo-{i:05d}" for i in range(jobs_count)]
    step = max(1, len(jobs) // sample_jobs)
    sample = jobs[::step][:sample_jobs]
    queue_depths: list[int] = []
    scoring = ctx.scoring_workers or FANOUT_SCORING_WORKERS
    redis_args = ["--notify-keyspace-events", "KA"]
    with BenchPipeline(
        ctx, name, scoring=scoring, redis_args=redis_args, data_url=data_url,
        data_pids=data_pids, env=env,
    ) as pipeline:  # fmt: skip
        pipeline.register(jobs)
        pipeline.start_processes()
        watcher = CommitWatcher(data_url or pipeline.url, sample)
        watcher.start()
        commands_before = command_stats(pipeline.servers())
        started = time.monotonic()
        try:
            process, output = start_loadgen(
                ctx, pipeline, "loadgen", jobs=jobs, rate_per_job=rate,
                duration_s=duration_s, record="all", record_jobs=sample,
            )  # fmt: skip
            pids = {**pipeline.pids(), "loadgen": process.pid}
            cpu_before = cpu_after = cpu_seconds(pids)
            load_s = 1.0
            end = time.monotonic() + duration_s + 5
            while process.poll() is None and time.monotonic() < end + 60:
                pipeline.check_alive()
                queue_depths.append(int(pipeline.client.llen("rq:queue:scoring")))
                cpu_after = cpu_seconds(pids)  # the loadgen's last reading before it ends
                load_s = time.monotonic() - started
                time.sleep(1.0)
            summary = finish_loadgen(ctx, process, output, 5)
            records = summary["records"]
            last = {job: events[-1][2] for job, events in records.items() if events}
            grace = 10.0 if ctx.quick else 30.0
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not watcher.reached(last):
                time.sleep(0.1)
            commands = command_delta(
                commands_before, command_stats(pipeline.servers()), summary["sent"]
            )
            workers = pipeline.worker_stats(time.monotonic() - started)
            pump_pass = pump_pass_ms(pipeline, jobs)
        finally:
            watcher.stop()
    lags = watcher.lags(records)
    late = sum(1 for lag in lags if lag == float("inf"))
    p99 = percentile(lags, 99)
    cpu = cpu_by_role(cpu_before, cpu_after)
    sent_in_window = summary["rate"] * load_s
    writes_per_job_s = sum(watcher.row_writes.values()) / len(sample) / load_s
    details = {
        "events_published": summary["sent"],
        "publish_rate_per_s": round(summary["rate"]),
        "generator_max_behind_s": round(summary["max_behind_s"], 3),
        "sampled_jobs": len(sample),
        "sampled_events": len(lags),
        "uncommitted_sampled_events": late,
        "lag_p50_p90_p99_max_s": [round(percentile(lags, q), 3) for q in (50, 90, 99, 100)],
        "scoring_queue_depth_max": max(queue_depths, default=0),
        "scoring_queue_depth_samples": queue_depths[-10:],
        **commands,
        "cpu_s_by_role_during_load": cpu,
        "load_window_s": round(load_s, 1),
        "cpu_ms_per_event_by_role": {
            role: round(1000 * seconds / sent_in_window, 4) for role, seconds in cpu.items()
        },
        "row_writes_per_job_per_s_sampled": round(writes_per_job_s, 3),
        "row_writes_per_s_estimated": round(writes_per_job_s * len(jobs)),
        "pump_pass_ms_after_load": pump_pass,
        "rq_workers": workers,
    }
    note = (
        f"{len(jobs):,} jobs x {rate} event/s for "
        f"{duration_s} s, {scoring} rq worker scoring; lag sampled on "
        f"{len(sample)} jobs ({len(lags):,} events, "
        f"{late:,} not committed by the end)"
    )
    return p99, details, note


def pump_pass_ms(pipeline: BenchPipeline, jobs: list[str], passes: int = 5) -> dict[str, float]:
    """Time the pump's pass over the registered jobs, in this process, after the load.

    A :class:`scorer_worker.pump.Pump` on the pipeline's two sides runs ``passes`` passes
    (the job index, the queued markers, the level scan on the data side) beside the
    pipeline's own pump and workers. It enqueues no flushes, and no drain the pipeline's
    pump has queued already (the markers); rows still behind are returned to Python.

    Returns:
        The median pass in ms, and per 1,000 jobs.
    """
    settings = Settings(redis_url=pipeline.url, data_redis_url=pipeline.data_url or "")
    pump = Pump(pipeline.client, settings, data=pipeline.data)
    pump.run_once()  # the first pass also discovers, and loads the scripts
    times = []
    for _ in range(passes):
        started = time.perf_counter()
        pump.run_once()
        times.append(1000 * (time.perf_counter() - started))
    median = percentile(times, 50)
    return {"median_ms": round(median, 1), "ms_per_1000_jobs": round(1000 * median / len(jobs), 2)}
