"""Experiment 1, crash anywhere: SIGKILL the pump, scoring and sink workers at random instants
and in aimed phases while 100 jobs publish 500 events each; the rows must equal those of a
fault-free run of the same events, with no dead letters.

Kills are aimed as well as random (``inject/sitecustomize.py`` marks the phases):
* ``post-commit``: a scoring work-horse has committed state and cursor and lingers before it
  enqueues the sink flush: killed between the state commit and the sink flush;
* ``mid-flush``: a sink work-horse is inside ``PostgresWriter.write``; a PostgreSQL trigger
  makes 30 % of row UPDATEs ``pg_sleep`` 0.4 s, so the kill lands inside the transaction;
* ``task-start``: a worker took a task from the queue and has not started it (the task's
  queued marker is still set): the job's next task waits for the marker's TTL;
* random kills of a sink worker are also labelled when some job was committed but not yet
  flushed at that instant.
"""

from __future__ import annotations

import os
import random
import threading
import time
from datetime import UTC, datetime

import pytest
import redis
from rq.registry import FailedJobRegistry, StartedJobRegistry

from ckpt_pipeline.testing.convergence import levels, wait_converged
from ckpt_pipeline.testing.events import synthetic_run, xadd_many
from ckpt_pipeline.testing.jobs import make_jobs
from scorer_worker import keys

from .faults import Chaos
from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs, count_writes, pg_execute, slow_writes

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, MIN_KILLS = 100, 500, 30
CHUNK, ROUND_PAUSE_S = 10, 0.5  # 50 rounds of 10 events per job: publishing spans ~25 s
FAST = {"queued_marker_ttl_s": 5, "flush_lock_ttl_s": 5}
# Each kind of kill, how many: 36 in all, a third of them aimed at a phase.
PLAN = {
    "pump": 7,
    "scoring": 7,
    "sink": 7,
    "post-commit": 6,
    "mid-flush": 6,
    "task-start": 3,
}


def chaos_seed() -> int:
    seed = int(os.environ.get("CKPT_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"chaos seed {seed} (rerun with CKPT_CHAOS_SEED={seed})")
    return seed


def publish_gradually(open_client, jobs, events, done: threading.Event) -> None:
    client = open_client()  # a client of its own, on the data side
    try:
        for start in range(0, EVENTS_PER_JOB, CHUNK):
            for job in jobs:
                xadd_many(client, job.id, events[job.id][start : start + CHUNK])
            time.sleep(ROUND_PAUSE_S)
    finally:
        client.close()
        done.set()


def data_side(server, make_cluster, topology: str):
    """(data URL or None, a function opening a data-side client) for the experiment."""
    if topology == "one-server":
        return None, lambda: redis.Redis.from_url(server.url)
    cluster = make_cluster("cluster")
    return cluster.url, cluster.client


@pytest.mark.parametrize("topology", ["one-server", "cluster"])
def test_crash_anywhere_rows_equal_a_fault_free_run(
    make_redis, make_database, make_pipeline, make_cluster, tmp_path, topology
):
    """The same experiment with every job's data on one server, or on a 3-master Redis
    Cluster (the queue side then stays on the server); both against one fault-free run."""
    seed = chaos_seed()
    rng = random.Random(seed)
    jobs = make_jobs(JOBS, seed)
    ids = [job.id for job in jobs]
    events = {job.id: synthetic_run(job.id, seed, EVENTS_PER_JOB) for job in jobs}
    replays = sum(len(e) - len(set(e)) for e in events.values())

    reference_db = make_database("reference")
    reference_redis = make_redis("reference")
    reference_s = reference_run(reference_redis.url, reference_db, jobs, events)
    reference_redis.stop()

    server, db = make_redis("redis"), make_database("crash")
    client = redis.Redis.from_url(server.url)  # the queue side
    data_url, open_data = data_side(server, make_cluster, topology)
    data = open_data()
    setup_jobs(db, client, jobs, data=data)
    count_writes(db)
    slow_writes(db, fraction=0.3, seconds=0.4)
    pipeline = make_pipeline(server.url, db, probes=True, data_url=data_url, **FAST)
    chaos = Chaos(pipeline, data, tmp_path / "probes", rng, ids)
    published = threading.Event()
    publisher = threading.Thread(
        target=publish_gradually, args=(open_data, jobs, events, published), daemon=True
    )
    run_start = time.monotonic()
    publisher.start()

    schedule = [kind for kind, n in PLAN.items() for _ in range(n)]
    rng.shuffle(schedule)
    for kind in schedule:
        time.sleep(rng.uniform(0.2, 0.8))
        chaos.kill(kind)
    while not published.is_set():  # keep killing until the last event is published
        time.sleep(rng.uniform(0.2, 0.8))
        chaos.kill(rng.choice(["pump", "scoring", "sink"]))
    publisher.join()
    backlog = levels(data, ids)
    undrained = sum(data.xlen(keys.events(job_id)) for job_id in ids)

    converge_s = wait_converged(data, ids, timeout_s=60)
    since_last_fault = time.monotonic() - chaos.last_fault
    run_s = time.monotonic() - run_start
    exited = pipeline.exited()
    comparison = compare_runs(db, reference_db, ids)
    dead = dead_letter_count(data)
    failed = sum(len(FailedJobRegistry(q, connection=client)) for q in ("scoring", "sink"))
    # Idle now, so whatever RQ still lists as started was held by a killed worker.
    abandoned = sum(len(StartedJobRegistry(q, connection=client)) for q in ("scoring", "sink"))
    writes = int(pg_execute(db, "SELECT count(*) FROM chaos_writes")[0][0])
    reference_versions = int(
        pg_execute(reference_db, "SELECT sum(scoring_version) FROM local_training_jobs")[0][0]
    )
    kills = pipeline.kills()

    record(
        "1-crash-anywhere" + ("" if topology == "one-server" else "-cluster"),
        {
            "title": "Crash anywhere"
            + ("" if topology == "one-server" else " (data on a 3-master Redis Cluster)"),
            "seed": seed,
            "jobs": JOBS,
            "events_per_job": EVENTS_PER_JOB,
            "events_published": sum(len(e) for e in events.values()),
            "replayed_events_in_streams": replays,
            "kills_total": sum(kills.values()),
            "kills_by_role": kills,
            "kills_by_kind": chaos.by_kind(),
            "aimed_phase_not_seen": chaos.misses,
            "restarts": sum(kills.values()),
            "tunables": FAST,
            "slow_row_updates": "30% of row UPDATEs pg_sleep 0.4 s inside the transaction",
            "run_seconds": round(run_s, 1),
            "converged_seconds_after_last_fault": round(since_last_fault, 1),
            "backlog_at_last_fault": {
                "undrained_events": undrained,
                "jobs_behind_scoring": len(backlog.behind_scoring),
                "jobs_behind_the_sink": len(backlog.behind_sink),
            },
            "reference_run_seconds": round(reference_s, 1),
            "row_writes": writes,
            "row_writes_reference": reference_versions,
            "rq_jobs_left_started_by_killed_workers": abandoned,
            "rq_jobs_failed": failed,
            "dead_letters": dead,
            "processes_that_exited_by_themselves": exited,
            **comparison.summary(),
            "lost": comparison.lost,
            "duplicates": comparison.duplicate_metric_rows,
            "kill_log": [k.__dict__ for k in chaos.kills],
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    print(f"{sum(kills.values())} kills {kills} {chaos.by_kind()}; converged in {converge_s:.1f}s")
    assert since_last_fault < 60
    assert sum(kills.values()) >= MIN_KILLS
    assert all(kills[role] > 0 for role in ("pump", "scoring", "sink"))
    assert not exited, f"processes exited on their own: {exited}"
    assert comparison.lost == 0, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
    assert dead == 0


def test_with_default_timeouts_a_job_held_by_a_dead_worker_converges_within_60s(
    make_redis, make_database, make_pipeline, tmp_path
):
    """The defaults (queued marker 30 s, flush lock 30 s) against the worst single kills:
    a worker dies holding a task it has not started (the marker stays until its TTL), and a
    sink worker dies inside a write (the flush lock stays until its TTL)."""
    seed = chaos_seed()
    rng = random.Random(seed)
    jobs = make_jobs(20, seed + 1)
    ids = [job.id for job in jobs]
    events = {job.id: synthetic_run(job.id, seed, EVENTS_PER_JOB) for job in jobs}
    reference_db = make_database("reference")
    reference_redis = make_redis("reference")
    reference_run(reference_redis.url, reference_db, jobs, events)
    reference_redis.stop()

    server, db = make_redis("redis"), make_database("defaults")
    client = redis.Redis.from_url(server.url)
    setup_jobs(db, client, jobs)
    slow_writes(db, fraction=0.3, seconds=0.4)
    pipeline = make_pipeline(server.url, db, probes=True, CKPT_CHAOS_TASK_START_P="0.3")
    chaos = Chaos(pipeline, client, tmp_path / "probes", rng, ids)
    half = EVENTS_PER_JOB // 2
    for job in jobs:
        xadd_many(client, job.id, events[job.id][:half])
    # Mid-flush first: a worker killed holding a task blocks every job of that task (up to
    # CKPT_DISPATCH_BATCH_JOBS) until the marker's TTL, and no flush would run meanwhile.
    aimed = [chaos.kill("mid-flush", wait_s=20), chaos.kill("task-start", wait_s=20)]
    for job in jobs:  # the rest arrives after the kills: held jobs have work waiting
        xadd_many(client, job.id, events[job.id][half:])
    converge_s = wait_converged(client, ids, timeout_s=90)
    since_last_fault = time.monotonic() - chaos.last_fault
    comparison = compare_runs(db, reference_db, ids)
    record(
        "1b-default-timeouts",
        {
            "title": "Crash with the default timeouts",
            "seed": seed,
            "jobs": len(jobs),
            "events_published": sum(len(e) for e in events.values()),
            "kills": [k.__dict__ for k in aimed],
            "aimed_phase_not_seen": chaos.misses,
            "tunables": "defaults (queued marker TTL 30 s, flush lock TTL 30 s)",
            "converged_seconds_after_last_fault": round(since_last_fault, 1),
            "dead_letters": dead_letter_count(client),
            **comparison.summary(),
            "lost": comparison.lost,
            "duplicates": comparison.duplicate_metric_rows,
        },
    )
    print(f"kills {[k.kind for k in aimed]}; converged {since_last_fault:.1f}s after the last")
    assert chaos.misses == 0
    assert since_last_fault < 60, converge_s
    assert comparison.lost == 0, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
    assert dead_letter_count(client) == 0
