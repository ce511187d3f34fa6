"""Failover of the data side: SIGKILL a Redis Cluster master under load; its replica is
promoted and the pipeline goes on without a restart.

Every job's data is on a 3-master cluster (3 replicas, AOF ``appendfsync everysec``, no
``WAIT``), the queue side on a plain server. 40 jobs publish 150 events each through a
cluster client, as pods do, in rounds; halfway, the master holding the most jobs is killed.
Replication is asynchronous, so events the master acknowledged in its last moments may
never reach the replica: the experiment counts them (``acked_events_lost``) rather than
assuming none. It then checks what must hold whatever was lost:

* the rows equal those of a fault-free run of the events that survived (as if the lost
  ones had never been sent): nothing counted twice, no row out of step with its state;
* no row went backwards while the rows were polled (``scoring_version``, ``current_step``);
* the pipeline converged, with the same processes (none restarted).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis
from redis.exceptions import RedisError

from ckpt_pipeline.testing.convergence import wait_converged
from ckpt_pipeline.testing.events import JobEvents
from ckpt_pipeline.testing.jobs import make_jobs
from producer.wire import EVENT_FIELD, stream_key
from scorer_worker import keys
from scorer_worker.store import load_state

from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs, pg_execute

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, ROUND_EVENTS, ROUND_PAUSE_S = 40, 150, 5, 0.25  # 30 rounds, ~10 s


class Publisher(threading.Thread):
    """Pods' side: XADD each job's events in rounds, retrying a round that failed (a
    retried event may be appended twice; the fold counts it once). Records which events
    the cluster acknowledged."""

    def __init__(self, open_client, events: dict[str, list[str]]) -> None:
        super().__init__(daemon=True, name="publisher")
        self.open_client, self.events = open_client, events
        self.acked: dict[str, set[int]] = {job: set() for job in events}  # event indexes
        self.rounds_done = 0
        self.retried_rounds = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        client = self.open_client()
        try:
            for start in range(0, EVENTS_PER_JOB, ROUND_EVENTS):
                self._round(client, start)
                self.rounds_done += 1
                time.sleep(ROUND_PAUSE_S)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            client.close()

    def _round(self, client, start: int) -> None:
        deadline = time.monotonic() + 60
        while True:
            pipe = client.pipeline(transaction=False)
            sent = []
            for job, events in self.events.items():
                for index in range(start, min(start + ROUND_EVENTS, len(events))):
                    pipe.xadd(stream_key(job), {EVENT_FIELD: events[index]})
                    sent.append((job, index))
            try:
                replies = pipe.execute(raise_on_error=False)
            except RedisError:
                replies = [None] * len(sent)
            for (job, index), reply in zip(sent, replies, strict=True):
                if reply is not None and not isinstance(reply, Exception):
                    self.acked[job].add(index)
            if all(index in self.acked[job] for job, index in sent):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the cluster did not take a round within 60 s")
            self.retried_rounds += 1
            time.sleep(0.2)
            client.nodes_manager.initialize()  # a failed master: look its slots up again


class RowWatcher(threading.Thread):
    """Polls the rows; records any ``scoring_version`` or ``current_step`` that went down."""

    def __init__(self, pg_url: str, job_ids: list[str]) -> None:
        super().__init__(daemon=True, name="row-watcher")
        self.pg_url, self.job_ids = pg_url, job_ids
        self.seen: dict[str, tuple[int, int]] = {}
        self.backwards: list[str] = []
        self.polls = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rows = pg_execute(
                self.pg_url,
                "SELECT id, coalesce(scoring_version, 0), coalesce(current_step, 0) "
                "FROM local_training_jobs WHERE id = ANY(%s)",
                (self.job_ids,),
            )
            for job_id, version, step in rows:
                before = self.seen.get(job_id, (0, 0))
                if version < before[0] or step < before[1]:
                    self.backwards.append(f"{job_id}: {before} -> {(version, step)}")
                self.seen[job_id] = (max(version, before[0]), max(step, before[1]))
            self.polls += 1
            time.sleep(0.2)


def surviving_events(data, job_id: str, events: list[str]) -> list[str]:
    """The events of ``job_id`` that its final state holds (by kind and step)."""
    state = load_state(data, job_id)
    kept = []
    for encoded in events:
        event = json.loads(encoded)
        kind, step = event["kind"], event["step"]
        if (
            (kind == "train_begin" and state.begins)
            or (kind == "train_end" and state.end is not None)
            or (kind == "train_log" and step in state.train)
            or (kind == "eval" and step in state.evals)
        ):
            kept.append(encoded)
    return kept


def test_a_killed_master_is_replaced_and_rows_match_the_surviving_events(
    make_redis, make_database, make_pipeline, make_cluster
):
    jobs = make_jobs(JOBS, seed=15)
    ids = [job.id for job in jobs]
    events = {job.id: JobEvents(job.id).take(EVENTS_PER_JOB, end=True) for job in jobs}
    server, db, cluster = make_redis("queue"), make_database("failover"), make_cluster()
    client, data = redis.Redis.from_url(server.url), cluster.client()
    setup_jobs(db, client, jobs, data=data)
    pipeline = make_pipeline(server.url, db, data_url=cluster.url)
    pids = {proc.name: proc.pid for proc in pipeline.all()}
    watcher = RowWatcher(db, ids)
    watcher.start()
    publisher = Publisher(cluster.client, events)
    publisher.start()

    while publisher.rounds_done < 15 and publisher.is_alive():
        time.sleep(0.05)
    held = {}
    for job in ids:
        held.setdefault(data.get_node_from_key(keys.state(job)).port, []).append(job)
    victim_port = max(held, key=lambda port: len(held[port]))
    killed = cluster.kill_master_of(keys.state(held[victim_port][0]))
    failover_s = cluster.wait_for_failover(killed, timeout_s=30)
    failed_over_at = time.monotonic()
    publisher.join(120)
    assert publisher.error is None, publisher.error
    data.nodes_manager.initialize()
    converge_s = wait_converged(data, ids, timeout_s=90)
    converged_after_failover_s = time.monotonic() - failed_over_at
    watcher.stop.set()
    watcher.join(5)

    survivors = {job: surviving_events(data, job, events[job]) for job in ids}
    lost = {
        job: sum(1 for index in publisher.acked[job] if events[job][index] not in survivors[job])
        for job in ids
    }
    reference_db = make_database("failover_reference")
    reference_redis = make_redis("reference")
    reference_run(reference_redis.url, reference_db, jobs, survivors)
    comparison = compare_runs(db, reference_db, ids)
    exited = pipeline.exited()
    restarted = [proc.name for proc in pipeline.all() if proc.pid != pids[proc.name]]
    record(
        "6-cluster-failover",
        {
            "title": "A Redis Cluster master killed under load (data side)",
            "jobs": JOBS,
            "events_per_job": EVENTS_PER_JOB,
            "jobs_on_the_killed_master": len(held[victim_port]),
            "failover_seconds": round(failover_s, 2),
            "converged_seconds_after_failover": round(converged_after_failover_s, 1),
            "converge_wait_seconds": round(converge_s, 1),
            "publisher_rounds_retried": publisher.retried_rounds,
            "acked_events_lost": sum(lost.values()),
            "lost": sum(lost.values()),  # the summary table's column: acknowledged, then gone
            "duplicates": comparison.duplicate_metric_rows,
            "jobs_with_lost_events": sum(1 for n in lost.values() if n),
            "rows_backwards": len(watcher.backwards),
            "row_polls": watcher.polls,
            "dead_letters": dead_letter_count(data),
            "processes_restarted_or_exited": restarted + exited,
            **comparison.summary(),
        },
    )
    print(f"failover {failover_s:.1f}s, lost {sum(lost.values())} acked events, "
          f"converged {converged_after_failover_s:.1f}s after failover")  # fmt: skip
    assert not watcher.backwards, watcher.backwards[:5]
    assert not exited and not restarted, (exited, restarted)
    assert comparison.lost == 0 and not comparison.differing_rows, comparison.examples[:5]
    assert not comparison.differing_metrics, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
    assert dead_letter_count(data) == 0
    # Only what the master acknowledged in its last second can be gone (appendfsync
    # everysec, asynchronous replication): at most the rounds of about a second.
    assert sum(lost.values()) <= len(held[victim_port]) * ROUND_EVENTS * 8
