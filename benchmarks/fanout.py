"""Fan-out: many registered jobs each publishing one event per second; lag to committed state.

All jobs are registered (and have rows) before a load generator process publishes one event
per job per second, spread evenly, for the run's duration. The lag of an event is the time
from its XADD (the server clock in its entry id) to the first moment its job's committed
cursor is seen at or past it. Commits are seen through keyspace notifications on the job's
``state`` and ``meta`` keys, for a sample of the jobs; on each notification the cursor is
read, and the time after that read is the commit time (so a lag is never under-stated by
more than the read, about a millisecond). Events not committed when the run ends count as
infinitely late.
"""

from __future__ import annotations

import time
from typing import Any

from .common import FANOUT_SCORING_WORKERS, Context, Figure, percentile
from .pipeline import BenchPipeline, finish_loadgen, start_loadgen
from .watch import CommitWatcher, command_delta, command_stats

NAMES = ("fanout_jobs", "fanout_lag_p99_s")
FULL_JOBS = 10_000


def sizes(quick: bool) -> dict[str, Any]:
    if quick:
        return {"jobs": 1000, "events_per_job_per_s": 1, "duration_s": 20, "sample_jobs": 200}
    return {"jobs": FULL_JOBS, "events_per_job_per_s": 1, "duration_s": 60, "sample_jobs": 500}


# When the lag target is missed at the full count, smaller counts are measured (30 s each)
# to report the largest count that holds it on this machine.
LADDER = (5_000, 2_500, 1_000)
LADDER_DURATION_S = 30


def run(ctx: Context) -> list[Figure]:
    size = ctx.sizes["fanout"]
    jobs_count = size["jobs"]
    p99, details, note = _measure(ctx, jobs_count, size["duration_s"], size["sample_jobs"])
    ctx.details["fanout"] = details
    target_jobs = jobs_count if ctx.quick else FULL_JOBS
    reached = jobs_count if p99 <= 2.0 else 0
    if not ctx.quick and not reached:
        ladder = {}
        for count in LADDER:
            rung_p99, _, _ = _measure(ctx, count, LADDER_DURATION_S, min(500, count))
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


def _measure(
    ctx: Context, jobs_count: int, duration_s: int, sample_jobs: int
) -> tuple[float, dict[str, Any], str]:
    """Run ``jobs_count`` jobs for ``duration_s``; return lag p99, details and a note."""
    size = {**ctx.sizes["fanout"], "duration_s": duration_s, "sample_jobs": sample_jobs}
    jobs = [f"fo-{i:05d}" for i in range(jobs_count)]
    step = max(1, len(jobs) // size["sample_jobs"])
    sample = jobs[::step][: size["sample_jobs"]]
    queue_depths: list[int] = []
    scoring = ctx.scoring_workers or FANOUT_SCORING_WORKERS
    redis_args = ["--notify-keyspace-events", "KA"]
    with BenchPipeline(ctx, "fanout", scoring=scoring, redis_args=redis_args) as pipeline:
        pipeline.register(jobs)
        pipeline.start_processes()
        watcher = CommitWatcher(pipeline.url, sample)
        watcher.start()
        commands_before = command_stats(pipeline.client)
        started = time.monotonic()
        try:
            process, output = start_loadgen(
                ctx, pipeline, "loadgen", jobs=jobs, rate_per_job=size["events_per_job_per_s"],
                duration_s=size["duration_s"], record="all", record_jobs=sample,
            )  # fmt: skip
            end = time.monotonic() + size["duration_s"] + 5
            while process.poll() is None and time.monotonic() < end + 60:
                pipeline.check_alive()
                queue_depths.append(int(pipeline.client.llen("rq:queue:scoring")))
                time.sleep(1.0)
            summary = finish_loadgen(ctx, process, output, 5)
            records = summary["records"]
            last = {job: events[-1][2] for job, events in records.items() if events}
            grace = 10.0 if ctx.quick else 30.0
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not watcher.reached(last):
                time.sleep(0.1)
            commands = command_delta(
                commands_before, command_stats(pipeline.client), summary["sent"]
            )
            workers = pipeline.worker_stats(time.monotonic() - started)
        finally:
            watcher.stop()
    lags = watcher.lags(records)
    late = sum(1 for lag in lags if lag == float("inf"))
    p99 = percentile(lags, 99)
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
        "rq_workers": workers,
    }
    note = (
        f"{len(jobs):,} jobs x {size['events_per_job_per_s']} event/s for "
        f"{size['duration_s']} s, {scoring} rq worker scoring; lag sampled on "
        f"{len(sample)} jobs ({len(lags):,} events, "
        f"{late:,} not committed by the end)"
    )
    return p99, details, note
