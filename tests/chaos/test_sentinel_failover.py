"""Experiment 11, Sentinel failover of the queue side: the primary behind Sentinel is SIGKILLed
under load; the pump and the workers (the Procfile's commands, ``REDIS_URL`` a
``redis+sentinel://`` URL) follow the promoted replica without a restart, and the rows
converge to those of a fault-free run.

Replication is asynchronous: what only the old primary acknowledged may be gone. The
experiment counts it rather than hides it: RQ tasks enqueued and never run (lost queue
entries), tasks run twice (a dequeue the replica never saw), drains and flushes enqueued
again while an earlier task for the same job still waited (re-enqueued work), and, when the
data side is on the same primary, events and state commits lost with it.

``DATA_SIDES`` says where the data side lives: ``"queue"`` (on the sentinel-managed primary,
beside RQ: ``CKPT_DATA_REDIS_URL`` unset) or ``"separate"`` (a plain ``redis-server`` named by
``CKPT_DATA_REDIS_URL``, which the failover does not touch).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from ckpt_pipeline.testing.convergence import wait_converged, wait_until
from ckpt_pipeline.testing.events import synthetic_run
from ckpt_pipeline.testing.jobs import make_jobs, setup_jobs
from ckpt_pipeline.testing.local_sentinel import LocalSentinel
from ckpt_pipeline.testing.pipeline import Pipeline
from producer.wire import EVENT_FIELD
from scorer_worker import keys
from scorer_worker.connection import connect
from scorer_worker.sentinel import close_client
from scorer_worker.settings import Settings

from .harness import MODEL_NAME, dead_letter_count, probe_options, record, reference_run
from .rows import compare_runs, slow_writes

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, SEED = 20, 400, 9
ROUND_EVENTS, ROUND_PAUSE_S, KILL_AFTER_ROUNDS = 10, 0.1, 15  # 40 rounds, the kill at 15
# Slowed row writes keep sink tasks waiting in RQ, so the kill has queue entries to lose.
SLOW_WRITE_FRACTION, SLOW_WRITE_S = 0.5, 0.3
# A process stuck on the dead primary's address would wait out CKPT_REDIS_RETRY_S (60 s).
CONVERGE_BOUND_S = 30.0
QUEUES = (keys.SCORING_QUEUE, "sink")
DATA_SIDES = ("separate", "queue")


class SentinelPipeline(Pipeline):
    """A :class:`Pipeline` whose harness client follows the primary too (``Pipeline.open``
    opens ``redis.Redis.from_url(url)``, which has no ``redis+sentinel://`` form)."""

    def __init__(self, folder: Path, *, queue: redis.Redis, data: Any, **options: Any) -> None:
        super().__init__(folder, **options)
        self.client, self.data = queue, data  # open() then keeps them


@dataclass
class Published:
    """What the publisher thread did: XADDs acknowledged per job, and how it went."""

    acked: Counter = field(default_factory=Counter)
    # A retried round's XADDs the old primary had applied and replicated before it died:
    # the explicit ids make Redis refuse them, so an event is never in a stream twice.
    already_there: Counter = field(default_factory=Counter)
    longest_round_s: float = 0.0
    error: BaseException | None = None


def publish(
    client: redis.Redis,
    events: dict[str, list[str]],
    first_ms: int,
    at_kill: threading.Event,
    done: Published,
) -> None:
    """XADD every event in rounds of ``ROUND_EVENTS`` per job; set ``at_kill`` mid-way.

    Entry ids are explicit (``first_ms-<index>``), in publication order, so a round retried
    across the failover adds each event at most once.
    """
    try:
        for number, start in enumerate(range(0, EVENTS_PER_JOB, ROUND_EVENTS)):
            if number == KILL_AFTER_ROUNDS:
                at_kill.set()
            pipe, order = client.pipeline(transaction=False), []
            for job_id, texts in events.items():
                for index in range(start, min(start + ROUND_EVENTS, EVENTS_PER_JOB)):
                    entry_id = f"{first_ms}-{index + 1}"
                    pipe.xadd(keys.events(job_id), {EVENT_FIELD: texts[index]}, id=entry_id)
                    order.append(job_id)
            started = time.monotonic()
            replies = pipe.execute(raise_on_error=False)
            done.longest_round_s = max(done.longest_round_s, time.monotonic() - started)
            for job_id, reply in zip(order, replies, strict=True):
                if isinstance(reply, redis.ResponseError) and "equal or smaller" in str(reply):
                    done.already_there[job_id] += 1
                elif isinstance(reply, Exception):
                    raise reply
                else:
                    done.acked[job_id] += 1
            time.sleep(ROUND_PAUSE_S)
    except BaseException as exc:  # reported by the test, not lost in the thread
        done.error = exc
        at_kill.set()


# --- the tasks' ledger (tests/chaos/inject: CKPT_CHAOS_TASK_LOG_DIR) -------------------------


@dataclass
class Ledger:
    """Every RQ task the processes enqueued (acknowledged) and started, by RQ id."""

    enqueued: dict[str, dict[str, Any]] = field(default_factory=dict)
    started: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def read(cls, folder: Path) -> Ledger:
        """Read every process's ``<pid>.tasks.jsonl``."""
        ledger = cls()
        for path in folder.glob("*.tasks.jsonl"):
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry["what"] == "enqueue":
                    ledger.enqueued[entry["task"]] = entry
                else:
                    ledger.started[entry["task"]].append(entry["at"])
        return ledger

    def never_started(self) -> list[str]:
        """Tasks enqueued and acknowledged that no worker ever ran: lost queue entries."""
        return [task for task in self.enqueued if task not in self.started]

    def run_twice(self) -> list[str]:
        """Tasks that started more than once (a dequeue the new primary never heard of)."""
        return [task for task, starts in self.started.items() if len(starts) > 1]

    def first_start_after(self, at: float) -> float | None:
        """When the first task started after ``at`` (wall clock), if one did."""
        later = [s for starts in self.started.values() for s in starts if s > at]
        return min(later, default=None)

    def reenqueued(self, since: float, until: float) -> int:
        """Jobs enqueued again (in ``[since, until]``) while an earlier task for the same job
        and queue still waited: the queued marker that prevents it was lost, or expired."""
        by_job: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for entry in self.enqueued.values():
            for job_id in entry["jobs"]:
                by_job[(entry["queue"], job_id)].append(entry)
        count = 0
        for entries in by_job.values():
            entries.sort(key=lambda e: e["at"])
            for later_index, entry in enumerate(entries):
                if not since <= entry["at"] <= until:
                    continue
                waiting = [
                    e for e in entries[:later_index]
                    if min(self.started.get(e["task"]) or [float("inf")]) > entry["at"]
                ]  # fmt: skip
                count += bool(waiting)
        return count


def state_versions(client: redis.Redis, ids: list[str]) -> dict[str, int]:
    """Each job's state version (its meta)."""
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hget(keys.meta(job_id), "version")
    return {job_id: int(v or 0) for job_id, v in zip(ids, pipe.execute(), strict=True)}


def entries_added(client: redis.Redis, ids: list[str]) -> dict[str, int]:
    """Each stream's ``entries-added`` (every XADD it ever took; drains trim, not reset it)."""
    added = {}
    for job_id in ids:
        try:
            added[job_id] = int(client.xinfo_stream(keys.events(job_id))["entries-added"])
        except redis.ResponseError:  # no such stream: nothing of it survived
            added[job_id] = 0
    return added


@pytest.mark.parametrize("data_side", DATA_SIDES)
def test_pump_and_workers_follow_a_sentinel_failover(
    data_side: str, make_redis, make_database, tmp_path: Path
) -> None:
    jobs = make_jobs(JOBS, SEED)
    ids = [job.id for job in jobs]
    events = {job.id: synthetic_run(job.id, SEED, EVENTS_PER_JOB) for job in jobs}
    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, jobs, events)
    reference_redis.stop()

    sentinel = LocalSentinel(tmp_path / "sentinel").start()
    task_log = tmp_path / "tasks"
    task_log.mkdir()
    tunables: dict[str, Any] = {"CKPT_CHAOS_TASK_LOG_DIR": task_log}
    settings = Settings(redis_url=sentinel.url, redis_retry_s=30)
    queue = connect(settings, ride_out_outages=True)
    publisher_client = connect(settings, ride_out_outages=True)
    data, data_url, data_on_primary = queue, None, data_side == "queue"
    if not data_on_primary:  # the producers publish to the data side: they miss the failover
        data_url = make_redis("data").url
        data = publisher_client = redis.Redis.from_url(data_url, socket_timeout=10)
    db = make_database("sentinel")
    setup_jobs(db, queue, jobs, model_name=MODEL_NAME, data=data)
    slow_writes(db, SLOW_WRITE_FRACTION, SLOW_WRITE_S)
    pipeline = SentinelPipeline(
        tmp_path, queue=queue, data=data, redis_url=sentinel.url, data_url=data_url, sink_url=db,
        scoring=2, sink=2, log_dir=tmp_path / "logs", **probe_options(None, tunables),
    )  # fmt: skip
    try:
        pipeline.start(wait=True, timeout_s=60)
        pids = {proc.name: proc.pid for proc in pipeline.all()}
        at_kill, published = threading.Event(), Published()
        first_ms = int(time.time() * 1000)
        publisher = threading.Thread(
            target=publish, args=(publisher_client, events, first_ms, at_kill, published)
        )
        publisher.start()
        at_kill.wait(60)
        old = sentinel.primary()
        with old.client(socket_timeout=2) as direct:
            queued = {name: direct.llen(f"rq:queue:{name}") for name in QUEUES}
            before = state_versions(direct, ids) if data_on_primary else {}
        killed_wall, killed_at = time.time(), time.monotonic()
        sentinel.kill_primary()
        promoted_s = sentinel.wait_for_failover(old.port, timeout_s=30)
        promoted_at = time.monotonic()
        after = state_versions(data, ids) if data_on_primary else {}
        publisher.join(60)
        assert published.error is None, published.error

        wait_converged(data, ids, timeout_s=60)
        converged_at, converged_wall = time.monotonic(), time.time()
        wait_until(lambda: sum(queue.llen(f"rq:queue:{q}") for q in QUEUES) == 0, 30)
        ledger = Ledger.read(task_log)
        if ledger.never_started():  # a worker may be between its dequeue and the task's start
            time.sleep(1.0)
            ledger = Ledger.read(task_log)
        added = entries_added(data, ids)
        # Every event was acknowledged once, or found already there on a retry.
        sent = {j: published.acked[j] + published.already_there[j] for j in ids}
        lost_events = {j: sent[j] - added[j] for j in ids if added[j] < sent[j]}
        regressed = sorted(j for j in before if after[j] < before[j])
        comparison = compare_runs(db, reference_db, ids)
        unexplained = (
            set(comparison.missing_rows + comparison.differing_rows + comparison.differing_metrics)
            - set(lost_events) - set(regressed)
        )  # fmt: skip
        restarted = [p.name for p in pipeline.all() if p.pid != pids[p.name] or p.starts != 1]
        exited = pipeline.exited()
        # No replica is promoted before down-after-milliseconds: what is acknowledged later
        # was acknowledged by the new primary. The pump and the drains both enqueue.
        resumable = killed_wall + sentinel.down_after_ms / 1000
        first_enqueue = min(
            (e["at"] for e in ledger.enqueued.values() if e["at"] > resumable), default=None
        )
        first_start = ledger.first_start_after(resumable)
        lost_tasks, twice = ledger.never_started(), ledger.run_twice()

        def since_kill(wall: float | None) -> float | None:
            return None if wall is None else round(wall - killed_wall, 1)

        figures = {
            "title": "Sentinel failover of the queue side",
            "data_side": data_side,
            "jobs": JOBS,
            "events_published": JOBS * EVENTS_PER_JOB,
            "tasks_waiting_in_rq_at_kill": queued,
            "slow_row_writes": f"{SLOW_WRITE_FRACTION:.0%} of UPDATEs sleep {SLOW_WRITE_S} s",
            "replica_promoted_seconds_after_kill": round(promoted_s, 1),
            "first_enqueue_on_new_primary_seconds_after_kill": since_kill(first_enqueue),
            "first_task_started_on_new_primary_seconds_after_kill": since_kill(first_start),
            "publisher_longest_round_seconds": round(published.longest_round_s, 1),
            "xadds_already_applied_when_retried": sum(published.already_there.values()),
            "converged_seconds_after_promotion": round(converged_at - promoted_at, 1),
            "converged_seconds_after_last_fault": round(converged_at - killed_at, 1),
            "tasks_enqueued": len(ledger.enqueued),
            "queue_entries_lost": len(lost_tasks),
            "queue_entries_lost_enqueued_before_kill": sum(
                ledger.enqueued[t]["at"] < killed_wall for t in lost_tasks
            ),
            "tasks_run_twice": len(twice),
            "jobs_reenqueued_while_a_task_waited_after_kill": ledger.reenqueued(
                killed_wall, converged_wall
            ),
            "jobs_reenqueued_while_a_task_waited_before_kill": ledger.reenqueued(0, killed_wall),
            "events_lost": sum(lost_events.values()),
            "jobs_with_lost_events": len(lost_events),
            "state_versions_regressed": len(regressed),
            "processes_restarted": restarted,
            "processes_that_exited_by_themselves": exited,
            "dead_letters": dead_letter_count(data),
            **comparison.summary(),
            "rows_differing_unexplained_by_lost_data": len(unexplained),
            "lost": comparison.lost,
            "duplicates": comparison.duplicate_metric_rows,
        }
        record(f"11-sentinel-failover-{data_side}", figures)
        print(json.dumps(figures, indent=1, default=str))
        assert not exited, f"processes exited on their own: {exited}"
        assert not restarted, f"processes restarted: {restarted}"
        assert first_enqueue is not None and first_start is not None, "no work after the kill"
        assert figures["converged_seconds_after_promotion"] < CONVERGE_BOUND_S
        assert not unexplained, comparison.examples[:5]
        assert comparison.duplicate_metric_rows == 0
        if not data_on_primary:
            assert comparison.lost == 0 and not lost_events
    finally:
        pipeline.close()
        close_client(queue)
        publisher_client.close()
        sentinel.stop()
