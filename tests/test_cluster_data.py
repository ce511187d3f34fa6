"""The data side on a real Redis Cluster (3 masters, 3 replicas), the queue side on a plain
server: drains, the pump and workers, the WAIT option, dead letters and discovery.

The cluster itself refuses a script whose keys span two slots, so every test here also
checks that no script call covers two jobs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from ckpt_pipeline.runner import run_all_in_one
from ckpt_pipeline.testing.jobs import Job, ensure_sqlite_schema, setup_jobs, sqlite_path
from producer.events import build_event
from producer.wire import EVENT_FIELD, decision_field
from scorer_worker import keys
from scorer_worker.bulk import drain_many
from scorer_worker.deadletter import dead_letter_jobs, list_dead_letters
from scorer_worker.errors import ReplicationTimeout
from scorer_worker.pump import Pump
from scorer_worker.settings import Settings
from scorer_worker.store import load_state
from scorer_worker.topology import masters
from sink.writers.sqlite import SqliteWriter
from tests.conftest import flush_cluster

from .helpers import JOB
from .test_bulk import check_pipelined_drains, drain_task
from .test_drain_pump_flush import publish, raw_run
from .test_order_independence import runs

pytestmark = pytest.mark.slow


def spread_jobs(client, count_per_master: int, prefix: str = "cj") -> list[str]:
    """Job ids with ``count_per_master`` of them on each master."""
    found: dict[str, list[str]] = {}
    index = 0
    while len(found) < 3 or min(len(jobs) for jobs in found.values()) < count_per_master:
        job = f"{prefix}-{index}"
        index += 1
        node = client.get_node_from_key(keys.state(job)).name
        if len(found.setdefault(node, [])) < count_per_master:
            found[node].append(job)
    return sorted(job for jobs in found.values() for job in jobs)


def other_master_job(client, job: str) -> str:
    """A job id held by another master than ``job``."""
    node = client.get_node_from_key(keys.state(job)).name
    return next(
        other
        for other in (f"job-{i}" for i in range(2, 1000))
        if client.get_node_from_key(keys.state(other)).name != node
    )


@hyp_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(run=runs(), data=st.data())
def test_pipelined_drains_equal_the_pure_fold_on_a_cluster(cluster_client, run, data):
    flush_cluster(cluster_client)
    check_pipelined_drains(
        cluster_client, run, data, other_job=other_master_job(cluster_client, JOB)
    )


def test_pump_and_workers_with_the_data_on_a_cluster(redis_client, cluster_client, tmp_path):
    db = tmp_path / "jobs.db"
    ensure_sqlite_schema(db)
    settings = Settings(
        redis_url=_url(redis_client),
        data_redis_url=_cluster_url(cluster_client), sink_url=f"sqlite:///{db}",
    )  # fmt: skip
    jobs = [Job(job, f"tok-{job}") for job in spread_jobs(cluster_client, 3)]
    setup_jobs(settings.sink_url, redis_client, jobs, model_name="m", data=cluster_client)
    for job in jobs:
        end = build_event("train_end", job.id, 40, 4.0, None, {"status": "completed"}, ts=5.0)
        ended = [*raw_run(4, job=job.id), end]
        publish(cluster_client, ended, job=job.id)
    run_all_in_one(redis_client, settings, burst=True, data=cluster_client)
    writer = SqliteWriter(sqlite_path(settings.sink_url))
    for job in jobs:
        state = load_state(cluster_client, job.id)
        assert state.status == "completed" and cluster_client.xlen(keys.events(job.id)) == 0
        assert writer.read_job(job.id)["status"] == "completed"
    # Each side holds only its own keys: no job data on the queue side, no RQ on the data side.
    assert not list(redis_client.scan_iter("ckpt:{*}:state"))
    assert not [k for m in _masters(cluster_client) for k in m.scan_iter("rq:*")]


def test_commits_wait_for_replicas_when_asked(cluster_client):
    jobs = spread_jobs(cluster_client, 1)
    for job in jobs:
        publish(cluster_client, raw_run(2, job=job), job=job)
    one = Settings(redis_url="redis://unused", data_wait_replicas=1, data_wait_timeout_ms=2000)
    results, _ = drain_task(cluster_client, jobs[:2], one)
    assert all(r.caught_up and r.commits for r in results.values())
    # Each master has one replica: waiting for two times out, and the drain says so.
    two = one.model_copy(update={"data_wait_replicas": 2, "data_wait_timeout_ms": 100})
    started = time.monotonic()
    with pytest.raises(ReplicationTimeout):
        drain_many(cluster_client, jobs[2:], two, time.monotonic() + 5)
    assert time.monotonic() - started >= 0.1


def test_dead_letters_and_discovery_span_every_master(redis_client, cluster_client):
    jobs = spread_jobs(cluster_client, 2, prefix="dl")
    for job in jobs:
        cluster_client.xadd(keys.events(job), {EVENT_FIELD: "not json"})
    drain_task(cluster_client, jobs, Settings(redis_url="redis://unused"))
    assert dead_letter_jobs(cluster_client) == jobs
    assert {ref.split("/")[0] for ref, _ in list_dead_letters(cluster_client)} == set(jobs)
    env = {
        **os.environ,
        "REDIS_URL": _url(redis_client),
        "CKPT_DATA_REDIS_URL": _cluster_url(cluster_client),
    }
    listed = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", "dead", "list"], env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert {line.split("/")[0] for line in listed.stdout.splitlines()} == set(jobs)
    for job in jobs:  # unregistered jobs with events, one or more per master
        publish(cluster_client, raw_run(1, job=job), job=job)
    pump = Pump(redis_client, Settings(redis_url="redis://unused"), data=cluster_client)
    assert pump.discover() == len(jobs)
    assert {m.decode() for m in redis_client.smembers(keys.JOBS)} == set(jobs)


def _url(client) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/0"


def _cluster_url(client) -> str:
    node = client.get_default_node()
    return f"redis://{node.host}:{node.port}/0"


def _masters(client):
    return masters(client)


def test_producers_on_any_cluster_node_publish_and_read_decisions(cluster_client, tmp_path):
    from producer import CheckpointEventsCallback, EventPublisher

    job = spread_jobs(cluster_client, 1)[0]
    holder = cluster_client.get_node_from_key(keys.state(job))
    other = next(node for node in cluster_client.get_primaries() if node.name != holder.name)
    url = f"redis://{other.host}:{other.port}/0"  # a node that does not hold the job
    publisher = EventPublisher(job, url, spool_dir=tmp_path / "spool", flush_interval_ms=1)
    callback = CheckpointEventsCallback(job, publisher=publisher)
    field = decision_field(10)
    cluster_client.hset(keys.decision(job), field, "0.5,1.0")
    try:
        publisher.publish(build_event("train_log", job, 1, 0.1, {"loss": 1.0}))
        publisher.flush(timeout_s=10)
        assert cluster_client.xlen(keys.events(job)) == 1 and publisher.spooled == 0
        assert callback._decision_reader().hget(keys.decision(job), field) == b"0.5,1.0"
    finally:
        publisher.close(timeout_s=10)
