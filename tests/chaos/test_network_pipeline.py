"""Experiments 14 and 15, blackholes under the pipeline: the pump, the scoring and the sink
workers run in a network namespace of their own and reach Redis and PostgreSQL only through
a veth pair, whose packets are then dropped (not refused) for ``BLACKHOLE_S``.

* 14: every packet between the workers (and the pump) and Redis is dropped.
* 15: every packet between the sink and PostgreSQL is dropped, with transactions open at
  the moment the link goes (row UPDATEs made slow for that moment, so that the cut lands
  inside them); the server ends each abandoned transaction after the sink's
  idle-in-transaction timeout, which frees its row locks.

Events keep arriving from outside the namespace throughout and stop as the link heals. No
process may exit or hang: after the heal the rows converge (time reported) to those of a
fault-free run of the same events, with nothing lost or counted twice, no dead letter, and
no lock or transaction left open.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from ckpt_pipeline.testing.convergence import levels, wait_converged
from ckpt_pipeline.testing.events import synthetic_run, xadd_many
from ckpt_pipeline.testing.jobs import Job, make_jobs
from ckpt_pipeline.testing.local_postgres import LocalPostgres
from ckpt_pipeline.testing.netfault import Link, unavailable_reason
from ckpt_pipeline.testing.pipeline import Pipeline
from scorer_worker import keys
from sink.migrate import run_migrations

from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs, pg_execute, slow_writes

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

JOBS, EVENTS_PER_JOB, SEED = 20, 300, 16
BEFORE_S, BLACKHOLE_S = 8.0, 30.0
ROLES = ("pump", "scoring", "sink")
SINK_SESSIONS = "{a}application_name = 'ckpt-pipeline sink' AND {a}client_addr = %s::inet"


@dataclass
class Setup:
    """The servers, the link and the database of one experiment."""

    link: Link
    redis: object
    postgres: LocalPostgres
    db: str  # as the test reaches it (127.0.0.1)
    jobs: list[Job]
    events: dict[str, list[str]]

    @property
    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]


@pytest.fixture
def setup(make_redis) -> Iterator[Setup]:
    """A link, Redis and PostgreSQL listening on its root side, a migrated database."""
    with Link("ckpt-pipe") as link:
        server = make_redis("redis", bind=(link.host_ip,))
        postgres = LocalPostgres(listen_on=(link.host_ip,)).start()
        try:
            db = postgres.create_database(f"net_{uuid.uuid4().hex[:12]}")
            run_migrations(db)
            jobs = make_jobs(JOBS, SEED)
            events = {job.id: synthetic_run(job.id, SEED, EVENTS_PER_JOB) for job in jobs}
            yield Setup(link, server, postgres, db, jobs, events)
        finally:
            postgres.remove()


def start_pipeline(make_pipeline: Callable[..., Pipeline], s: Setup) -> Pipeline:
    """The Procfile's processes, inside the namespace, with the servers' veth addresses."""
    redis_url = s.redis.url_on(s.link.host_ip)
    sink_url = s.db.replace("@127.0.0.1:", f"@{s.link.host_ip}:")
    env = {"REDIS_URL": redis_url, "RQ_REDIS_URL": redis_url, "CKPT_SINK": sink_url}
    pipeline = make_pipeline(
        s.redis.url,
        s.db,
        role_prefix={role: s.link.wrap([]) for role in ROLES},
        role_env={role: env for role in ROLES},
    )
    pipeline.wait_ready(60)
    return pipeline


def publish_until(s: Setup, stop_at: float) -> threading.Thread:
    """Publish every job's events in rounds of 10, spread until ``stop_at`` (monotonic)."""
    rounds = range(0, EVENTS_PER_JOB, 10)
    pause = (stop_at - time.monotonic()) / len(rounds)

    def publish() -> None:
        producer = redis.Redis.from_url(s.redis.url)
        for start in rounds:
            for job in s.jobs:
                xadd_many(producer, job.id, s.events[job.id][start : start + 10])
            time.sleep(max(0.0, pause))
        producer.close()

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    return thread


def committed_versions(client: redis.Redis, ids: list[str]) -> int:
    """Sum of the jobs' state versions."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.meta(job_id), "version")
    return sum(int(v or 0) for v in pipe.execute())


def open_leftovers(client: redis.Redis, s: Setup) -> dict[str, int]:
    """Flush locks still held, and sink sessions still inside a transaction."""
    locks = sum(int(client.exists(keys.flush_lock(job_id))) for job_id in s.ids)
    sessions = pg_execute(
        s.db,
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE {SINK_SESSIONS.format(a='')} AND xact_start IS NOT NULL",
        (s.link.ns_ip,),
    )[0][0]
    return {"flush_locks_held": locks, "sink_transactions_open": int(sessions)}


@dataclass
class Run:
    """One experiment under way: the clients, the processes and the publishing thread."""

    s: Setup
    client: redis.Redis
    pipeline: Pipeline
    publisher: threading.Thread
    cut: float = 0.0

    def blackhole(self, port: int) -> None:
        """Cut the link to ``port`` (Redis or PostgreSQL) and note when."""
        self.s.link.blackhole(port=port)
        self.cut = time.monotonic()

    def alive(self) -> int:
        """How many of the pipeline's processes are running (all of them, or a defect)."""
        return sum(p.alive for p in self.pipeline.all())


def start_run(s: Setup, make_pipeline: Callable[..., Pipeline]) -> Run:
    """Register the jobs, start the processes and the publishing, wait ``BEFORE_S``."""
    client = redis.Redis.from_url(s.redis.url, socket_timeout=10)
    setup_jobs(s.db, client, s.jobs)
    pipeline = start_pipeline(make_pipeline, s)
    publisher = publish_until(s, time.monotonic() + BEFORE_S + BLACKHOLE_S)
    time.sleep(BEFORE_S)
    return Run(s, client, pipeline, publisher)


def heal_and_compare(
    run: Run, experiment: str, figures: dict[str, object], make_database, make_redis
) -> dict[str, object]:
    """Heal the link; wait for convergence; compare with a fault-free run of the events;
    record the figures and check what must hold after every blackhole."""
    s, client = run.s, run.client
    run.s.link.heal()
    healed = time.monotonic()
    run.publisher.join(30)
    wait_converged(client, s.ids, timeout_s=120)
    converged_s = time.monotonic() - healed
    time.sleep(1.0)  # a lock is released just after the write it guarded
    leftovers = open_leftovers(client, s)
    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, s.jobs, s.events)
    comparison = compare_runs(s.db, reference_db, s.ids)
    figures = {
        **figures,
        "link_backend": "iptables DROP of the server port, both ways",
        "blackhole_seconds": round(healed - run.cut, 1),
        "link_packets": s.link.stats(),
        "jobs": JOBS,
        "events_published": JOBS * EVENTS_PER_JOB,
        "converged_seconds_after_heal": round(converged_s, 1),
        **leftovers,
        **comparison.summary(),
        "lost": comparison.lost,
        "duplicates": comparison.duplicate_metric_rows,
        "dead_letters": dead_letter_count(client),
        "processes_that_exited_by_themselves": run.pipeline.exited(),
        "process_restarts": sum(p.starts - 1 for p in run.pipeline.all()),
    }
    record(experiment, figures)
    print(figures)
    assert comparison.lost == 0, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
    assert not comparison.differing_rows, comparison.examples[:5]
    assert figures["dead_letters"] == 0
    assert figures["processes_that_exited_by_themselves"] == []
    assert leftovers == {"flush_locks_held": 0, "sink_transactions_open": 0}
    assert converged_s < 60
    return figures


def test_workers_and_pump_blackholed_from_redis_for_30s(
    setup: Setup, make_pipeline, make_database, make_redis
):
    run = start_run(setup, make_pipeline)
    run.blackhole(setup.redis.port)
    time.sleep(1.0)  # commits already on the wire when the link went
    versions_at_cut = committed_versions(run.client, setup.ids)
    time.sleep(BLACKHOLE_S - 1.0)
    versions_before_heal = committed_versions(run.client, setup.ids)
    behind = len(levels(run.client, setup.ids).behind_scoring)
    alive = run.alive()
    figures = {
        "title": "Workers and pump blackholed from Redis",
        "state_versions_committed_during_blackhole": versions_before_heal - versions_at_cut,
        "jobs_behind_scoring_at_heal": behind,
        "processes_alive_through_blackhole": alive,
    }
    heal_and_compare(run, "14-network-workers", figures, make_database, make_redis)
    assert versions_before_heal == versions_at_cut, "the blackhole must cut the workers off"
    assert behind > 0 and alive == len(run.pipeline.all())


def cut_transactions(s: Setup, timeout_s: float = 30.0) -> list[int]:
    """Wait until sink sessions hold row locks inside a transaction; return their pids."""
    query = (
        "SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid "
        f"WHERE {SINK_SESSIONS.format(a='a.')} "
        "AND a.xact_start IS NOT NULL AND l.granted "
        "AND l.relation = 'local_training_jobs'::regclass AND l.mode = 'RowExclusiveLock'"
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [row[0] for row in pg_execute(s.db, query, (s.link.ns_ip,))]
        if pids:
            return pids
        time.sleep(0.01)
    raise AssertionError("no sink transaction held a row lock")


def wait_sessions_ended(s: Setup, pids: list[int], timeout_s: float) -> None:
    """Wait until the server ended every session in ``pids`` (their locks go with them)."""
    start = time.monotonic()
    while pg_execute(s.db, "SELECT count(*) FROM pg_locks WHERE pid = ANY(%s)", (pids,))[0][0]:
        assert time.monotonic() - start < timeout_s, "abandoned transactions kept their locks"
        time.sleep(0.1)


def test_sink_blackholed_from_postgres_mid_transaction_for_30s(
    setup: Setup, make_pipeline, make_database, make_redis
):
    run = start_run(setup, make_pipeline)
    slow_writes(setup.db, 1.0, 2.0)  # every row UPDATE now spends 2 s inside its transaction
    pids = cut_transactions(setup)
    run.blackhole(setup.postgres.port)
    # No DDL here (slow_writes' trigger swap would wait for the very locks being measured).
    pg_execute(setup.db, "DELETE FROM chaos_slow")
    wait_sessions_ended(setup, pids, timeout_s=BLACKHOLE_S - 2)
    ended_s = time.monotonic() - run.cut
    time.sleep(max(0.0, BLACKHOLE_S - ended_s))
    behind = len(levels(run.client, setup.ids).behind_sink)
    alive = run.alive()
    figures = {
        "title": "Sink blackholed from PostgreSQL mid-transaction",
        "transactions_cut_holding_row_locks": len(pids),
        "abandoned_transactions_ended_seconds": round(ended_s, 1),
        "jobs_behind_the_sink_at_heal": behind,
        "processes_alive_through_blackhole": alive,
    }
    heal_and_compare(run, "15-network-sink", figures, make_database, make_redis)
    assert pids and behind > 0 and alive == len(run.pipeline.all())
    # Ended by the server: the slow UPDATE (2 s) plus the idle-in-transaction timeout (10 s).
    assert ended_s < 2 + 10 + 5
