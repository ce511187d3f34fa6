"""Experiment 3, Redis restarts under the workers: the pump and the workers (the Procfile's
commands) keep running through two restarts of ``redis-server`` with AOF on, reconnect by
themselves, and finish; the state survives and the rows equal a fault-free run's.

Restart 1 is clean (SIGTERM: Redis writes its AOF out). Restart 2 is a crash (SIGKILL) with
``appendfsync always`` switched on just before, so every acknowledged write is on disk.
Producers (one ``EventPublisher`` per job) keep publishing and spool while Redis is away.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from rq.registry import FailedJobRegistry

from ckpt_pipeline.testing.convergence import wait_converged
from ckpt_pipeline.testing.events import synthetic_run
from ckpt_pipeline.testing.jobs import make_jobs
from producer import EventPublisher
from scorer_worker import keys

from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, DOWN_S, SEED = 20, 500, 10.0, 3
FAST = {"queued_marker_ttl_s": 5, "flush_lock_ttl_s": 5}


def state_versions(client: redis.Redis, ids: list[str]) -> dict[str, int]:
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.meta(job_id), "version")
    return {job_id: int(v or 0) for job_id, v in zip(ids, pipe.execute(), strict=True)}


def test_workers_and_pump_ride_out_redis_restarts(
    make_redis, make_database, make_pipeline, tmp_path
):
    jobs = make_jobs(JOBS, SEED)
    ids = [job.id for job in jobs]
    events = {job.id: synthetic_run(job.id, SEED, EVENTS_PER_JOB) for job in jobs}
    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, jobs, events)
    reference_redis.stop()

    server, db = make_redis("redis"), make_database("restart")
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    setup_jobs(db, client, jobs)
    pipeline = make_pipeline(server.url, db, **FAST)
    publishers = {
        job.id: EventPublisher(job.id, server.url, spool_dir=tmp_path / "spool", retry_max_s=1.0)
        for job in jobs
    }
    thirds = [0, EVENTS_PER_JOB // 3, 2 * EVENTS_PER_JOB // 3, EVENTS_PER_JOB]
    restarts, regressed = [], 0

    def publish(part: int) -> None:
        for start in range(thirds[part], thirds[part + 1], 10):
            for job in jobs:
                end = min(start + 10, thirds[part + 1])
                for text in events[job.id][start:end]:
                    publishers[job.id].publish(json.loads(text))
            time.sleep(0.1)

    for part, how in enumerate(("SIGTERM (clean shutdown)", "SIGKILL (appendfsync always)")):
        publish(part)
        time.sleep(1.0)  # let work be in flight when Redis goes
        if how.startswith("SIGKILL"):
            client.config_set("appendfsync", "always")
        before = state_versions(client, ids)
        down_at = time.monotonic()
        server.stop() if how.startswith("SIGTERM") else server.kill()
        publish_during = thirds[part + 1] + 30  # producers keep going while Redis is away
        for job in jobs:
            for text in events[job.id][thirds[part + 1] : publish_during]:
                publishers[job.id].publish(json.loads(text))
        time.sleep(max(0.0, DOWN_S - (time.monotonic() - down_at)))
        server.start()
        restarts.append({"how": how, "down_s": round(time.monotonic() - down_at, 1)})
        after = state_versions(client, ids)
        regressed += sum(after[j] < before[j] for j in ids)
        thirds[part + 1] = publish_during
    last_fault = time.monotonic()
    publish(2)
    spooled = sum(p.spooled for p in publishers.values())
    for publisher in publishers.values():
        publisher.close(timeout_s=30)
    left_in_spool = sum(p.spool.undelivered_bytes() for p in publishers.values())

    converge_s = wait_converged(client, ids, timeout_s=60)
    since_last_fault = time.monotonic() - last_fault
    exited = pipeline.exited()
    comparison = compare_runs(db, reference_db, ids)
    dead = dead_letter_count(client)
    failed = sum(len(FailedJobRegistry(q, connection=client)) for q in ("scoring", "sink"))
    record(
        "3-redis-restart",
        {
            "title": "Redis restarts under the workers",
            "jobs": JOBS,
            "events_published": sum(len(e) for e in events.values()),
            "restarts": restarts,
            "events_spooled_by_producers_while_down": spooled,
            "spool_bytes_left": left_in_spool,
            "state_versions_regressed": regressed,
            "processes_that_exited_by_themselves": exited,
            "processes_restarted_by_the_harness": 0,
            "rq_jobs_failed": failed,
            "converged_seconds_after_last_fault": round(since_last_fault, 1),
            "dead_letters": dead,
            **comparison.summary(),
            "lost": comparison.lost,
            "duplicates": comparison.duplicate_metric_rows,
            "tunables": FAST,
        },
    )
    print(f"restarts {restarts}; {spooled} spooled; converged {converge_s:.1f}s after publishing")
    assert not exited, f"processes exited on their own: {exited}"
    assert regressed == 0
    assert left_in_spool == 0
    assert since_last_fault < 60
    assert comparison.lost == 0, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
    assert dead == 0
