"""Experiment 4, sink outage: PostgreSQL is stopped for 60 s in the middle of a run while
events keep arriving; no update is lost, the rows converge once it is back, and the writes
that catch up are coalesced (about one per job, not one per state version missed).

Default settings throughout (sink retries, flush lock, queued markers): this is what a
deployment gets.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import redis

from ckpt_pipeline.testing.convergence import levels, wait_converged
from ckpt_pipeline.testing.events import synthetic_run, xadd_many
from ckpt_pipeline.testing.jobs import make_jobs

from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs, count_writes, pg_execute

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, SEED = 20, 500, 4
OUTAGE_S = 60.0
BEFORE_S = 6.0  # publishing runs ~BEFORE_S before the outage and ends as PostgreSQL returns


def versions(client: redis.Redis, ids: list[str]) -> tuple[int, int]:
    """Sum of state versions and of written versions over the jobs."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(f"ckpt:{{{job_id}}}:meta", "version", "written_version")
    pairs = [(int(v or 0), int(w or 0)) for v, w in pipe.execute()]
    return sum(v for v, _ in pairs), sum(w for _, w in pairs)


def test_postgres_down_for_60s_loses_nothing_and_catches_up_in_few_writes(
    chaos_postgres, make_redis, make_database, make_pipeline
):
    jobs = make_jobs(JOBS, SEED)
    ids = [job.id for job in jobs]
    events = {job.id: synthetic_run(job.id, SEED, EVENTS_PER_JOB) for job in jobs}
    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, jobs, events)
    reference_redis.stop()

    server, db = make_redis("redis"), make_database("outage")
    client = redis.Redis.from_url(server.url)
    setup_jobs(db, client, jobs)
    count_writes(db)
    pipeline = make_pipeline(server.url, db)
    rounds = range(0, EVENTS_PER_JOB, 10)
    pause = (BEFORE_S + OUTAGE_S) / len(rounds)
    publisher_done = threading.Event()

    def publish() -> None:
        producer = redis.Redis.from_url(server.url)
        for start in rounds:
            for job in jobs:
                xadd_many(producer, job.id, events[job.id][start : start + 10])
            time.sleep(pause)
        producer.close()
        publisher_done.set()

    threading.Thread(target=publish, daemon=True).start()
    time.sleep(BEFORE_S)
    chaos_postgres.stop()
    stopped_at = time.monotonic()
    time.sleep(1.0)  # a write acknowledged just before the stop records its version
    versions_at_stop, written_at_stop = versions(client, ids)
    time.sleep(OUTAGE_S - 1.0)
    publisher_done.wait(30)
    versions_at_start, written_at_start = versions(client, ids)
    behind_at_start = len(levels(client, ids).behind_sink)
    chaos_postgres.start()
    outage_s = time.monotonic() - stopped_at
    back = datetime.now(UTC)
    back_at = time.monotonic()

    converge_s = wait_converged(client, ids, timeout_s=60)
    since_back = time.monotonic() - back_at
    recovery_writes = int(
        pg_execute(db, "SELECT count(*) FROM chaos_writes WHERE at >= %s", (back,))[0][0]
    )
    final_versions, _ = versions(client, ids)
    comparison = compare_runs(db, reference_db, ids)
    dead = dead_letter_count(client)
    exited = pipeline.exited()
    record(
        "4-sink-outage",
        {
            "title": "Sink outage",
            "jobs": JOBS,
            "events_published": sum(len(e) for e in events.values()),
            "postgres_down_seconds": round(outage_s, 1),
            "state_versions_committed_while_down": versions_at_start - versions_at_stop,
            "written_versions_during_outage": written_at_start - written_at_stop,
            "jobs_behind_the_sink_when_it_returned": behind_at_start,
            "state_versions_committed_after_return": final_versions - versions_at_start,
            "row_writes_during_recovery": recovery_writes,
            "converged_seconds_after_postgres_returned": round(since_back, 1),
            "processes_that_exited_by_themselves": exited,
            "dead_letters": dead,
            **comparison.summary(),
            "lost": comparison.lost,
            "duplicates": comparison.duplicate_metric_rows,
            "tunables": "defaults (5 write attempts, backoff up to 10 s, lock TTL 30 s)",
        },
    )
    print(
        f"{versions_at_start - versions_at_stop} versions committed while PostgreSQL was down; "
        f"{recovery_writes} writes to catch up; converged {converge_s:.1f}s after its return"
    )
    assert written_at_start == written_at_stop  # nothing reached the stopped server
    assert versions_at_start - versions_at_stop > 2 * JOBS  # the backlog was real
    assert recovery_writes <= 2 * JOBS + (final_versions - versions_at_start)
    assert since_back < 60
    assert not exited
    assert comparison.lost == 0, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
    assert dead == 0
