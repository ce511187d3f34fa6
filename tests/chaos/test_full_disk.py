"""Experiment 16, a full disk: a real ``Trainer`` run (a separate process) whose spool folder
sits on a small tmpfs, while ``redis-server`` is stopped from the middle of training until a
few seconds after it ended.

The spool fills within seconds of the outage; the publisher then holds what it can in memory
(``max_queue_events`` is lowered to 40 in the training process, so that this short run loses
events) and drops the oldest, counting them. When Redis returns, the process, waiting in
``close``, delivers its ``events_lost`` report, the spool and what it held.

* Training finished, and its steps during the outage were as fast as before it.
* The in-memory queue stayed within ``max_queue_events``; the process's memory did not grow.
* Events lost > 0, and exactly: published - arrived in Redis (each event counted once)
  = the publisher's report = the row's ``events_lost`` = ``ckpt-pipeline status``'s.
* The row equals that of a fault-free run of the events that did arrive.

``python -m tests.chaos.test_full_disk CONFIG.json`` is the training process: the chaos
training program (``tests/chaos/train_proc.py``) with a smaller queue, marking when training
ended (``<report>.closing``, written as the publisher is closed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from ckpt_pipeline.testing.convergence import wait_converged
from ckpt_pipeline.testing.jobs import Job
from ckpt_pipeline.testing.processes import REPO, process_tree_rss
from ckpt_pipeline.testing.small_disk import SmallDiskUnavailable, fill, free_bytes, small_disk
from scorer_worker import keys

from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs, read_rows

pytestmark = pytest.mark.chaos

JOB = Job("3e9d7c2a-6f1b-4a8e-b5d4-0c7f9e2a1b36", "tok-full-disk")
EPOCHS = 40  # 200 optimizer steps of the tiny model: 10 to 25 s on two cores
OUTAGE_AT_STEP = 40
REDIS_BACK_AFTER_END_S = 3.0  # the process waits in close() meanwhile
DISK_BYTES = 64 * 1024
SPOOL_ROOM_BYTES = 8 * 1024  # the rest of the small disk holds other files (a ballast)
MAX_QUEUE_EVENTS = 40
RSS_GROWTH_MAX = 64 * 1024 * 1024


# --- the training process ---------------------------------------------------------------


def training_main(config_path: str) -> None:
    """The training process: ``train_proc`` with a smaller queue and an end-of-training mark."""
    from tests.chaos import train_proc

    config = json.loads(Path(config_path).read_text())
    publisher_class = train_proc.RecordingPublisher
    init, close = publisher_class.__init__, publisher_class.close

    def bounded_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, max_queue_events=config["max_queue_events"], **kwargs)

    def marked_close(self: Any, timeout_s: float = 10.0) -> None:
        # trainer.train() returned: the test may now bring Redis back.
        Path(config["report"]).with_suffix(".closing").write_text(repr(time.time()))
        close(self, timeout_s)

    publisher_class.__init__ = bounded_init  # type: ignore[method-assign]
    publisher_class.close = marked_close  # type: ignore[method-assign]
    train_proc.main(config_path)


def start_training(tmp_path: Path, redis_url: str, spool: Path) -> tuple[subprocess.Popen, Path]:
    report = tmp_path / "train.json"
    config = {
        "workdir": str(tmp_path / "train"),
        "job_id": JOB.id,
        "redis_url": redis_url,
        "spool_dir": str(spool),
        "report": str(report),
        "epochs": EPOCHS,
        "max_queue_events": MAX_QUEUE_EVENTS,
    }
    config_path = tmp_path / "train.config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / "train.log", "wb")  # noqa: SIM115 (owned by the child)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.test_full_disk", str(config_path)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return proc, report


def wait_for_file(path: Path, proc: subprocess.Popen, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited with {proc.returncode}"
        try:
            return path.read_text()
        except FileNotFoundError:
            time.sleep(0.05)
    raise AssertionError(f"no {path.name} within {timeout_s:.0f}s")


def wait_for_step(report: Path, step: int, proc: subprocess.Popen) -> None:
    step_file = report.with_suffix(".step")
    while True:
        text = wait_for_file(step_file, proc)
        if text.split() and int(text.split()[0]) >= step:
            return
        time.sleep(0.05)


class RssSampler(threading.Thread):
    """Samples the resident memory of a process tree every 0.2 s: ``(time, bytes)``."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples = pid, []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            rss = process_tree_rss(self.pid)
            if rss:
                self.samples.append((time.time(), rss))

    def peak(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


# --- the stream, read as an operator would -----------------------------------------------


def stream_payloads(client: redis.Redis) -> list[str]:
    return [fields[b"event"].decode() for _, fields in client.xrange(keys.events(JOB.id))]


def split_reports(payloads: list[str]) -> tuple[list[str], list[str], dict[str, int]]:
    """The events that arrived and the loss reports (first occurrences, in stream order),
    and each publisher's largest reported count."""
    seen: set[str] = set()
    events, reports, reported = [], [], {}
    for payload in payloads:
        if payload in seen:
            continue  # a redelivery (at least once): each event counts once
        seen.add(payload)
        event = json.loads(payload)
        if event["kind"] == "events_lost":
            reports.append(payload)
            instance = event["info"]["instance"]
            reported[instance] = max(reported.get(instance, 0), event["info"]["lost"])
        else:
            events.append(payload)
    return events, reports, reported


def step_intervals(steps: list[list[float]], down: float, end: float) -> tuple[list, list]:
    """Inter-step wall times before the outage and during it."""
    before, during = [], []
    for (_, previous, _), (_, current, _) in itertools.pairwise(steps):
        if current <= down:
            before.append(current - previous)
        elif previous >= down and current <= end:
            during.append(current - previous)
    return before, during


def status_json(redis_url: str, sink_url: str) -> dict[str, Any]:
    """``ckpt-pipeline status JOB --json``, the real CLI."""
    env = {**os.environ, "REDIS_URL": redis_url, "CKPT_SINK": sink_url, "PYTHONPATH": str(REPO)}
    env.pop("CKPT_DATA_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", "status", JOB.id, "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- the experiment ---------------------------------------------------------------------


def test_a_full_spool_disk_loses_only_counted_events(
    chaos_redis, make_redis, make_database, make_pipeline, tmp_path
):
    client = redis.Redis.from_url(chaos_redis.url, socket_timeout=5)
    with contextlib.ExitStack() as unmount:
        try:
            mount = unmount.enter_context(small_disk(tmp_path / "small-disk", DISK_BYTES))
        except SmallDiskUnavailable as exc:
            pytest.skip(f"no small disk: {exc}")
        ballast = fill(mount, SPOOL_ROOM_BYTES)
        spool_room = free_bytes(mount)
        spool = mount / "spool"
        proc, report = start_training(tmp_path, chaos_redis.url, spool)
        unmount.callback(lambda: proc.poll() is None and proc.kill())  # before the unmount
        sampler = RssSampler(proc.pid)
        sampler.start()
        wait_for_step(report, OUTAGE_AT_STEP, proc)
        chaos_redis.stop()
        down = time.time()
        ended = float(wait_for_file(report.with_suffix(".closing"), proc, timeout_s=180))
        time.sleep(max(0.0, ended + REDIS_BACK_AFTER_END_S - time.time()))
        chaos_redis.start()
        up = time.time()
        assert proc.wait(timeout=120) == 0, (tmp_path / "train.log").read_text()[-3000:]
        sampler.stop.set()
        spool_left = sorted(p.name for p in spool.iterdir()) if spool.exists() else []
    run = json.loads(report.read_text())
    full = run["spool_max_bytes"]
    spool_full_at = next((t for _, t, size in run["steps"] if t > down and size >= full), None)

    arrived, reports, reported = split_reports(stream_payloads(client))
    published = set(run["published"])
    lost = run["publish_calls"] - len(arrived)  # every call handed one event over
    before, during = step_intervals(run["steps"], down, ended)
    rss_at_outage = sampler.peak(down - 2.0, down)
    rss_peak = sampler.peak(down, up)

    # The scoring side, after training: the row must equal a fault-free run of what arrived.
    db = make_database("full_disk")
    setup_jobs(db, client, [JOB])
    pipeline = make_pipeline(chaos_redis.url, db)
    converge_s = wait_converged(client, [JOB.id], timeout_s=60)
    status = status_json(chaos_redis.url, db)
    exited = pipeline.exited()
    pipeline.stop()
    row = read_rows(db, [JOB.id])[JOB.id]
    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, [JOB], {JOB.id: reports + arrived})
    comparison = compare_runs(db, reference_db, [JOB.id])

    figures = {
        "title": "A full spool disk under a Redis outage",
        "disk_bytes": DISK_BYTES,
        "ballast_bytes": ballast,
        "spool_room_bytes": spool_room,
        "max_queue_events": MAX_QUEUE_EVENTS,
        "redis_down_seconds": round(up - down, 1),
        "redis_back_seconds_after_training": round(up - ended, 1),
        "spool_full_seconds_after_outage": (
            round(spool_full_at - down, 1) if spool_full_at else None
        ),
        "trainer_exit_code": proc.returncode,
        "steps": len(run["steps"]),
        "steps_during_outage": len(during),
        "median_step_s_before": round(statistics.median(before), 4),
        "median_step_s_during": round(statistics.median(during), 4),
        "max_step_s_before": round(max(before), 4),
        "max_step_s_during": round(max(during), 4),
        "publish_calls": run["publish_calls"],
        "publish_call_max_s": round(run["publish_seconds_max"], 6),
        "memory_queue_max_events": run["queue_max"],
        "rss_at_outage_mb": round(rss_at_outage / 2**20, 1),
        "rss_peak_during_outage_mb": round(rss_peak / 2**20, 1),
        "events_sent": run["publish_calls"],
        "events_arrived": len(arrived),
        "events_lost": lost,
        "events_lost_reported": sum(reported.values()),
        "publisher_dropped": run["dropped"],
        "events_spooled": run["spooled"],
        "spool_max_bytes": run["spool_max_bytes"],
        "spool_left_files": spool_left,
        "row_events_lost": row["events_lost"],
        "status_events_lost": status["pipeline"]["events_lost"],
        "status_row_events_lost": status["row"]["events_lost"],
        "scoring_converged_seconds": round(converge_s, 1),
        **comparison.summary(),
        # Events gone and not counted (the row's count is wrong), or rows that differ.
        "uncounted": abs(lost - row["events_lost"]) + comparison.lost,
        "lost": lost,  # the summary table's column: lost, and counted (above)
        "duplicates": comparison.duplicate_metric_rows,
        "dead_letters": dead_letter_count(client),
    }
    record("16-full-disk", figures)
    print(figures)
    assert proc.returncode == 0 and len(during) > 40, "the outage must fall inside training"
    assert full > 0 and spool_full_at is not None, "the spool must have filled"
    # Training never waited: steps during the outage as fast as before it.
    assert run["publish_seconds_max"] < 0.05
    assert statistics.median(during) < 1.5 * statistics.median(before) + 0.01
    # Bounded: the queue within its limit, and no memory growth to speak of.
    assert run["queue_max"] <= MAX_QUEUE_EVENTS
    assert rss_peak - rss_at_outage < RSS_GROWTH_MAX
    # Lost, counted, and counted once.
    assert set(arrived) <= published
    assert lost > 0
    assert lost == run["dropped"] == sum(reported.values())
    assert row["events_lost"] == lost
    assert status["pipeline"]["events_lost"] == lost == status["row"]["events_lost"]
    assert "computed without them" in status["pipeline"]["events_lost_note"]
    # Everything that arrived counts as in a fault-free run.
    assert comparison.lost == 0, comparison.examples
    assert comparison.duplicate_metric_rows == 0
    assert dead_letter_count(client) == 0
    assert spool_left == [] and run["spool_left_bytes"] == 0
    assert not exited


if __name__ == "__main__":
    training_main(sys.argv[1])
