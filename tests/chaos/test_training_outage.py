"""Experiment 2, Redis outage under training: a real ``Trainer`` run (a separate process,
``tests/chaos/train_proc.py``) while ``redis-server`` is stopped for 20 s and restarted.

* The training loop never raises and never waits on Redis: every ``publish`` call is timed,
  and the steps that ran during the outage are compared with the others.
* The spool stays bounded (at most the events of the outage) and is gone afterwards.
* Every event arrives, in order: the scoring side is started only after training, so the
  stream still holds every entry as delivered; first occurrences must equal what the
  callback published, in order (redeliveries of a batch cut by the outage are allowed:
  delivery is at least once, the scorer ignores duplicates).
* The row equals that of a run without outage: the same events delivered to a fresh Redis
  and database with no fault.
* A training process killed while events sit in its spool delivers them via
  ``ckpt-pipeline spool flush DIR``, or at its next start.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from ckpt_pipeline.testing.convergence import wait_converged
from ckpt_pipeline.testing.jobs import Job
from ckpt_pipeline.testing.processes import REPO
from scorer_worker import keys

from .harness import dead_letter_count, record, reference_run, setup_jobs
from .rows import compare_runs

pytestmark = pytest.mark.chaos

OUTAGE_S = 20.0
OUTAGE_AT_STEP = 100
EPOCHS = 120  # 600 optimizer steps of the tiny model: 25 to 50 s on two cores
JOB = Job("5b0c8f7e-3c2a-4d7e-9a61-2f1e0d9c8b7a", "tok-training-outage")
KILL_AT_STEP, KILLED_EPOCHS = 60, 20  # killed at step 60 of 100
KILLED_JOB = Job("7d2e4a1c-9b3f-4e8d-8c5a-1a2b3c4d5e6f", "tok-killed")


def start_training(
    tmp_path: Path,
    name: str,
    job: Job,
    redis_url: str,
    spool: Path,
    epochs: float,
    prefix: tuple[str, ...] = (),
) -> tuple[subprocess.Popen, Path]:
    """Start ``train_proc`` (under ``prefix``: ``ip netns exec NS`` puts it behind a link)."""
    report = tmp_path / f"{name}.json"
    config = {
        "workdir": str(tmp_path / name),
        "job_id": job.id,
        "redis_url": redis_url,
        "spool_dir": str(spool),
        "report": str(report),
        "epochs": epochs,
    }
    config_path = tmp_path / f"{name}.config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 (owned by the child)
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests.chaos.train_proc", str(config_path)],
        env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    return proc, report


def wait_for_step(report: Path, step: int, proc: subprocess.Popen, timeout_s: float = 120) -> int:
    step_file = report.with_suffix(".step")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training exited with {proc.returncode}"
        try:
            current = int(step_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            current = -1
        if current >= step:
            return current
        time.sleep(0.05)
    raise AssertionError(f"training did not reach step {step}")


def stream_payloads(client: redis.Redis, job_id: str) -> list[str]:
    return [fields[b"event"].decode() for _, fields in client.xrange(keys.events(job_id))]


def first_occurrences(payloads: list[str]) -> tuple[list[str], int]:
    seen, ordered = set(), []
    for payload in payloads:
        if payload not in seen:
            seen.add(payload)
            ordered.append(payload)
    return ordered, len(payloads) - len(ordered)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def step_intervals(steps: list[list[float]], down: float, up: float) -> tuple[list, list]:
    """Inter-step wall times, split into steps that overlapped the outage and the others."""
    during, outside = [], []
    for (_, previous, _), (_, current, _) in itertools.pairwise(steps):
        overlaps = previous < up and current > down
        (during if overlaps else outside).append(current - previous)
    return during, outside


def test_training_never_waits_on_redis_and_every_event_arrives_in_order(
    chaos_redis, make_redis, make_database, make_pipeline, tmp_path
):
    client = redis.Redis.from_url(chaos_redis.url, socket_timeout=5)
    proc, report = start_training(
        tmp_path, "train", JOB, chaos_redis.url, tmp_path / "spool", EPOCHS
    )
    wait_for_step(report, OUTAGE_AT_STEP, proc)
    chaos_redis.stop()
    down = time.time()
    time.sleep(OUTAGE_S)
    chaos_redis.start()
    up = time.time()
    assert proc.wait(timeout=180) == 0, (tmp_path / "train.log").read_text()[-3000:]
    run = json.loads(report.read_text())
    steps_during_outage = sum(1 for _, t, _ in run["steps"] if down <= t <= up)
    spool_empty_at = next((t for _, t, size in run["steps"] if t > up and size == 0), None)

    delivered = stream_payloads(client, JOB.id)
    in_order, redelivered = first_occurrences(delivered)
    outage_events = [p for p in run["published"] if down <= json.loads(p)["ts"] <= up]
    outage_bytes = sum(len(p.encode()) + 1 for p in outage_events)

    during, outside = step_intervals(run["steps"], down, up)
    timing = {
        "steps": len(run["steps"]),
        "steps_during_outage": steps_during_outage,
        "median_step_s_outside": round(statistics.median(outside), 4),
        "median_step_s_during": round(statistics.median(during), 4),
        "p95_step_s_outside": round(percentile(outside, 0.95), 4),
        "p95_step_s_during": round(percentile(during, 0.95), 4),
        "max_step_s_outside": round(max(outside), 4),
        "max_step_s_during": round(max(during), 4),
        "publish_calls": run["publish_calls"],
        "publish_call_max_s": round(run["publish_seconds_max"], 6),
    }

    # The scoring side now: the row must equal a run of the same events without outage.
    db = make_database("training")
    setup_jobs(db, client, [JOB])
    pipeline = make_pipeline(chaos_redis.url, db)
    converge_s = wait_converged(client, [JOB.id], timeout_s=60)
    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, [JOB], {JOB.id: run["published"]})
    comparison = compare_runs(db, reference_db, [JOB.id])
    exited = pipeline.exited()
    pipeline.stop()

    killed = spool_survives_a_killed_training_process(tmp_path, chaos_redis, client)

    record(
        "2-redis-outage-under-training",
        {
            "title": "Redis outage under training",
            "redis_down_seconds": round(up - down, 1),
            "trainer_exit_code": proc.returncode,
            "events_published": len(run["published"]),
            "events_published_during_outage": len(outage_events),
            "events_spooled": run["spooled"],
            "events_dropped": run["dropped"],
            "spool_max_bytes": run["spool_max_bytes"],
            "outage_events_bytes": outage_bytes,
            "spool_left_bytes": run["spool_left_bytes"],
            "memory_queue_max_events": run["queue_max"],
            "events_in_stream": len(delivered),
            "events_redelivered": redelivered,
            "events_missing": len(set(run["published"]) - set(delivered)),
            "in_order": in_order == run["published"],
            **timing,
            "converged_seconds_after_last_fault": (
                round(spool_empty_at - up, 1) if spool_empty_at else None
            ),
            "scoring_converged_seconds": round(converge_s, 1),
            **comparison.summary(),
            "lost": comparison.lost + len(set(run["published"]) - set(delivered)),
            "duplicates": comparison.duplicate_metric_rows,
            "dead_letters": dead_letter_count(client),
            "killed_training_process": killed,
        },
    )
    print(f"timing {timing}; spool max {run['spool_max_bytes']} B; killed {killed}")
    assert run["dropped"] == 0 and run["spool_left_bytes"] == 0
    assert steps_during_outage > 100, "the outage must fall inside training"
    assert spool_empty_at is not None and spool_empty_at - up < 60
    assert in_order == run["published"]
    # Never waits: publish is an in-memory append, and steps during the outage are as fast.
    assert run["publish_seconds_max"] < 0.05
    assert statistics.median(during) < 1.5 * statistics.median(outside) + 0.01
    assert max(during) < max(outside) + 0.5
    # Bounded: the spool never held more than the outage's events (plus one batch).
    assert run["spool_max_bytes"] <= outage_bytes + 64 * 1024
    assert comparison.lost == 0, comparison.examples
    assert comparison.duplicate_metric_rows == 0
    assert dead_letter_count(client) == 0
    assert not exited
    assert killed["lost_via_cli"] == 0 and killed["lost_at_next_start"] == 0


def spool_survives_a_killed_training_process(
    tmp_path: Path, server, client: redis.Redis
) -> dict[str, int]:
    """Two training processes are SIGKILLed while Redis is down and their events are in the
    spool; one spool is delivered by ``ckpt-pipeline spool flush``, the other by the next
    training process of the job, which delivers it before its own events."""
    server.stop()
    figures = {}
    for how in ("cli", "next_start"):
        spool = tmp_path / f"spool-{how}"
        proc, report = start_training(
            tmp_path, f"killed-{how}", KILLED_JOB, server.url, spool, KILLED_EPOCHS
        )
        wait_for_step(report, KILL_AT_STEP, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        spool_file = spool / f"{KILLED_JOB.id}.events.jsonl"
        spooled = [line for line in spool_file.read_text().splitlines() if line.strip()]
        published = report.with_suffix(".published.jsonl").read_text().splitlines()
        figures[f"published_before_kill_{how}"] = len(published)
        figures[f"in_memory_at_kill_{how}"] = len(published) - len(spooled)
        server.start()
        client.delete(keys.events(KILLED_JOB.id))
        if how == "cli":
            env = {**os.environ, "REDIS_URL": server.url, "PYTHONPATH": str(REPO)}
            done = subprocess.run(
                [sys.executable, "-m", "ckpt_pipeline.cli", "spool", "flush", str(spool)],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            delivered = stream_payloads(client, KILLED_JOB.id)
        else:
            proc, report = start_training(tmp_path, "restarted", KILLED_JOB, server.url, spool, 1)
            assert proc.wait(timeout=120) == 0
            delivered = stream_payloads(client, KILLED_JOB.id)[: len(spooled)]
        figures[f"spooled_when_killed_{how}"] = len(spooled)
        figures[f"lost_{'via_cli' if how == 'cli' else 'at_next_start'}"] = sum(
            1 for a, b in zip(spooled, delivered, strict=False) if a != b
        ) + max(0, len(spooled) - len(delivered))
        figures[f"spool_left_{how}"] = spool_file.exists() and bool(spool_file.read_text())
        if how == "cli":
            server.stop()
    return figures
