"""A paced load generator, run as its own process: ``python -m benchmarks.loadgen CONFIG.json``.

Publishes ``rate_per_job`` events per second for each job for ``duration_s`` seconds, spread
evenly (round robin over the jobs, one pipelined round every ``tick_s``), as many training
processes would. Events come from :class:`ckpt_pipeline.testing.events.JobEvents`. For the jobs in
``record_jobs`` it records each event's stream entry id (the server's clock at the XADD), all
events or evals only, and writes them with its counters to ``output``.

Config keys: ``url`` (the data side: a plain server, or any node of a Redis Cluster, which
is detected and then written through a cluster client, one pipeline per node), ``jobs``,
``rate_per_job``, ``duration_s``, ``output``, and optionally
``tick_s`` (0.01), ``record`` (``all``, ``eval`` or ``none``), ``record_jobs`` (all jobs),
``eval_every`` (10), ``max_events`` (no limit).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster

from ckpt_pipeline.testing.events import JobEvents
from producer.wire import EVENT_FIELD, stream_key
from scorer_worker.topology import cluster_enabled


def data_client(url: str) -> Any:
    """A client of the data side at ``url``: a cluster client for a cluster-mode node."""
    if cluster_enabled(url):
        return RedisCluster.from_url(url)
    return redis.Redis.from_url(url)


def main(config_path: str) -> None:
    """Publish as the config at ``config_path`` says; write the summary to its ``output``."""
    config = json.loads(Path(config_path).read_text())
    client = data_client(config["url"])
    jobs = config["jobs"]
    generators = [JobEvents(job, eval_every=config.get("eval_every", 10)) for job in jobs]
    stream_keys = [stream_key(job) for job in jobs]
    record = config.get("record", "all")
    recorded = set(config.get("record_jobs") or jobs) if record != "none" else set()
    records: dict[str, list] = {job: [] for job in jobs if job in recorded}
    total_rate = config["rate_per_job"] * len(jobs)
    duration = config["duration_s"]
    tick = config.get("tick_s", 0.01)
    limit = config.get("max_events") or int(total_rate * duration)
    sent, pointer, max_behind = 0, 0, 0.0
    pipe = client.pipeline(transaction=False)
    start = time.monotonic()
    next_tick = start
    while sent < limit:
        now = time.monotonic()
        if now - start >= duration + tick:
            break
        due = min(limit, int(total_rate * (now - start)) + 1) - sent
        batch = []
        for _ in range(max(0, due)):
            index = pointer % len(jobs)
            pointer += 1
            kind, payload = generators[index].next()
            pipe.xadd(stream_keys[index], {EVENT_FIELD: payload})
            batch.append((index, kind, generators[index].step))
        if batch:
            for (index, kind, step), entry_id in zip(batch, pipe.execute(), strict=True):
                job = jobs[index]
                if job in records and (record == "all" or kind == "eval"):
                    records[job].append([kind, step, entry_id.decode()])
            sent += len(batch)
        next_tick += tick
        delay = next_tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            max_behind = max(max_behind, -delay)
    elapsed = time.monotonic() - start
    summary = {
        "sent": sent,
        "elapsed_s": elapsed,
        "rate": sent / elapsed if elapsed else 0.0,
        "max_behind_s": max_behind,
        "records": records,
    }
    Path(config["output"]).write_text(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1])
