"""Redis memory per finished job, and the scoring worker's RSS growth across many events.

``redis_bytes_per_job``: typical jobs (``train_begin``, 1,000 train logs, 100 evals each
with a checkpoint save, ``train_end``) run through the whole pipeline until drained, written
and retired by the pump; the figure is what each job still holds in Redis, the sum of
``MEMORY USAGE`` over its keys (``ckpt:{job}:*``). The growth of ``used_memory`` over the run,
divided by the jobs, is shown beside it.

``worker_rss_growth_pct``: events are published in ten equal chunks over many jobs (1,000
events each), each chunk drained by one ``rq worker scoring`` (no sink worker, so its RSS is
the scoring worker's alone) before the next; the worker's RSS is read after each chunk. The
figure is the growth from after the first chunk (imports and caches warm) to the end.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ckpt_pipeline.testing.convergence import last_entry_ids
from ckpt_pipeline.testing.events import JobEvents, typical_job, xadd_all
from ckpt_pipeline.testing.processes import process_tree_rss
from scorer_worker import keys

from .common import Context, Figure
from .pipeline import BenchPipeline

REDIS_NAMES = ("redis_bytes_per_job",)
RSS_NAMES = ("worker_rss_growth_pct",)


def redis_sizes(quick: bool) -> dict[str, Any]:
    return {"jobs": 20 if quick else 100, "train_logs": 1000, "evals": 100}


def rss_sizes(quick: bool) -> dict[str, Any]:
    events = 100_000 if quick else 1_000_000
    return {"events": events, "jobs": events // 1000, "chunks": 10}


def run_redis_memory(ctx: Context) -> list[Figure]:
    size = ctx.sizes["redis_memory"]
    jobs = [f"mem-{i:04d}" for i in range(size["jobs"])]
    streams = [(job, typical_job(job, size["train_logs"], size["evals"])) for job in jobs]
    with BenchPipeline(ctx, "redis-memory") as pipeline:
        pipeline.start_processes()
        time.sleep(0.5)
        before = int(pipeline.client.info("memory")["used_memory"])
        pipeline.register(jobs)
        ids = xadd_all(pipeline.client, streams)
        last = last_entry_ids(jobs, ids)
        deadline = time.monotonic() + (60 if ctx.quick else 240)
        while not (pipeline.caught_up(last) and not pipeline.client.scard(keys.JOBS)):
            if time.monotonic() > deadline:
                raise TimeoutError("jobs were not drained, written and retired in time")
            time.sleep(0.1)
        time.sleep(1.0)  # markers and locks of the last tasks
        after = int(pipeline.client.info("memory")["used_memory"])
        by_kind: dict[str, list[int]] = defaultdict(list)
        per_job = []
        for job in jobs:
            total = 0
            for key in pipeline.client.scan_iter(match=f"ckpt:{{{job}}}:*", count=1000):
                used = int(pipeline.client.memory_usage(key, samples=0) or 0)
                by_kind[key.decode().rsplit("}:", 1)[1]].append(used)
                total += used
            per_job.append(total)
        other = _other_keys(pipeline.client)
    mean = sum(per_job) / len(per_job)
    events = len(streams[0][1])
    ctx.details["redis_memory"] = {
        "events_per_job": events,
        "bytes_per_job_mean_max": [round(mean), max(per_job)],
        "bytes_by_key_mean": {kind: round(sum(v) / len(v)) for kind, v in sorted(by_kind.items())},
        "used_memory_growth_per_job": round((after - before) / len(jobs)),
        "other_keys_left": other,
    }
    note = (
        f"{len(jobs)} finished jobs of {events:,} events; MEMORY USAGE of ckpt:{{job}}:* keys; "
        f"used_memory grew {(after - before) / len(jobs) / 1024:,.1f} KiB per job"
    )
    return [Figure("redis_bytes_per_job", mean, "bytes", "<=", 64 * 1024, note)]


def _other_keys(client) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for key in client.scan_iter(count=1000):
        text = key.decode()
        if not text.startswith("ckpt:{"):
            counts[text.split(":")[0] + ":" + (text.split(":")[1] if ":" in text else "")] += 1
    return dict(counts)


def run_worker_rss(ctx: Context) -> list[Figure]:
    size = ctx.sizes["worker_rss"]
    jobs = [f"rss-{i:05d}" for i in range(size["jobs"])]
    per_job = size["events"] // size["jobs"]
    per_chunk = per_job // size["chunks"]
    generators = {job: JobEvents(job, saves=True, max_steps=per_job) for job in jobs}
    samples = []
    with BenchPipeline(ctx, "worker-rss", scoring=1, sink=0) as pipeline:
        pipeline.register(jobs)
        pipeline.start_processes()
        worker = pipeline.procs["scoring"][0]
        start = time.monotonic()
        for chunk in range(size["chunks"]):
            final = chunk == size["chunks"] - 1
            streams = [(job, gen.take(per_chunk, end=final)) for job, gen in generators.items()]
            ids = xadd_all(pipeline.client, streams)
            last = last_entry_ids(jobs, ids)
            deadline = time.monotonic() + (60 if ctx.quick else 300)
            while not pipeline.caught_up(last, written=False):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chunk {chunk} was not drained in time")
                time.sleep(0.05)
            samples.append(process_tree_rss(worker.pid))
            ctx.log(
                f"  chunk {chunk + 1}/{size['chunks']}: worker RSS {samples[-1] / 2**20:.1f} MiB"
            )
        elapsed = time.monotonic() - start
    growth = 100 * (samples[-1] - samples[0]) / samples[0]
    ctx.details["worker_rss"] = {
        "rss_mib_after_each_chunk": [round(s / 2**20, 1) for s in samples],
        "events": per_chunk * size["chunks"] * len(jobs),
        "drain_rate_per_s": round(per_chunk * size["chunks"] * len(jobs) / elapsed),
        "worker": f"1 rq worker scoring ({ctx.effective_worker_class}), no sink worker",
    }
    note = (
        f"{per_chunk * size['chunks'] * len(jobs):,} events over {len(jobs):,} jobs: "
        f"{samples[0] / 2**20:.1f} MiB after the first tenth, "
        f"{samples[-1] / 2**20:.1f} MiB at the end"
    )
    return [Figure("worker_rss_growth_pct", growth, "%", "<=", 10, note)]
