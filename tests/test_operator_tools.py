"""Poison events, dead-letter tools and spool flushing, on a private redis-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ckpt_pipeline.runner import run_all_in_one
from ckpt_pipeline.status import pipeline_state
from ckpt_pipeline.testing.local_redis import free_port
from producer import EventPublisher
from producer.events import build_event, encode_event
from scorer_worker import keys
from scorer_worker.deadletter import list_dead_letters, make_dead_letter
from scorer_worker.registry import register_job
from scorer_worker.state import JobState
from scorer_worker.store import load_state

JOB = "ops-job"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", *args],
        capture_output=True, text=True, env=dict(os.environ), timeout=60,
    )  # fmt: skip


def publish(redis_client, *events) -> None:
    for event in events:
        redis_client.xadd(keys.events(JOB), {"event": encode_event(event)})


def evaluation(step: int, loss: float) -> dict:
    return build_event("eval", JOB, step, step / 10, {"eval_loss": loss}, ts=float(step))


def test_a_poison_event_is_retried_then_dead_lettered_and_the_job_goes_on(
    redis_client, pipeline_env, monkeypatch
):
    register_job(redis_client, JOB, "tok")
    original = JobState._apply_eval
    calls = []

    def explode_at_step_20(self, event):
        if event.step == 20:
            calls.append(event.step)
            raise ZeroDivisionError("boom in scoring")
        return original(self, event)

    monkeypatch.setitem(
        __import__("scorer_worker.state", fromlist=["_APPLY"])._APPLY, "eval", explode_at_step_20
    )
    publish(redis_client, evaluation(10, 1.0), evaluation(20, 0.9), evaluation(30, 0.8))
    for _ in range(10):
        run_all_in_one(redis_client, pipeline_env, burst=True)
        if redis_client.xlen(keys.events(JOB)) == 0:
            break
    assert len(calls) == pipeline_env.poison_max_attempts  # bounded retries
    state = load_state(redis_client, JOB)
    assert sorted(state.evals) == [10, 30]  # the job continued past the poison event
    ((_, letter),) = list_dead_letters(redis_client, job_id=JOB)
    assert (
        "ZeroDivisionError: boom in scoring" in letter.reason and "gave up after 3" in letter.reason
    )
    status = pipeline_state(redis_client, JOB)
    assert status["dead_letters"] == 1
    assert any("boom in scoring" in text for text in status["recent_dead_letters"])
    assert not [k for k in redis_client.hkeys(keys.meta(JOB)) if k.startswith(b"poison:")]

    shown = cli("status", JOB)
    assert shown.returncode == 0 and "boom in scoring" in shown.stdout


def test_dead_list_show_requeue_purge(redis_client, pipeline_env):
    register_job(redis_client, JOB, "tok")
    bad_version = json.dumps({**evaluation(40, 0.5), "v": 2})
    redis_client.xadd(keys.events(JOB), {"event": bad_version})
    redis_client.xadd(keys.events(JOB), {"event": "not json"})
    run_all_in_one(redis_client, pipeline_env, burst=True)

    listed = cli("dead", "list", "--job", JOB)
    assert listed.returncode == 0 and "unsupported wire version 2" in listed.stdout
    ids = [line.split()[0] for line in listed.stdout.splitlines()]
    assert len(ids) == 2
    shown = cli("dead", "show", ids[-1])
    assert shown.returncode == 0 and '"v": 2' in shown.stdout

    # A poison event dead-lettered before a scorer fix is requeued after it, and counts.
    letter = make_dead_letter(
        JOB, "1-1", "scoring raised X", encode_event(evaluation(40, 0.5)), 4096
    )
    poison_id = f"{JOB}/" + redis_client.xadd(keys.dead(JOB), letter.fields()).decode()
    requeued = cli("dead", "requeue", poison_id)
    assert requeued.returncode == 0 and f"{poison_id}: requeued" in requeued.stdout
    run_all_in_one(redis_client, pipeline_env, burst=True)
    assert 40 in load_state(redis_client, JOB).evals
    secret = "tok-0123456789"
    redacted = make_dead_letter(JOB, "1-2", "bad", f'{{"job_token": "{secret}"}}', 4096, (secret,))
    redacted_id = f"{JOB}/" + redis_client.xadd(keys.dead(JOB), redacted.fields()).decode()
    refused = cli("dead", "requeue", redacted_id)  # it would not be the event that was sent
    assert "not requeued (payload had a secret redacted)" in refused.stderr

    purged = cli("dead", "purge", "--job", JOB)
    assert purged.returncode == 0 and "purged" in purged.stdout
    assert redis_client.xlen(keys.dead(JOB)) == 0
    assert cli("dead", "show", f"{JOB}/0-1").returncode == 2


def test_spool_flush_delivers_a_crashed_runs_events(
    redis_client, redis_server, pipeline_env, tmp_path
):
    down = f"redis://127.0.0.1:{free_port()}/0"
    publisher = EventPublisher(JOB, down, spool_dir=tmp_path, socket_timeout_s=0.2)
    for step in range(5):
        publisher.emit("train_log", step, None, {"loss": 1.0})
    publisher.close(timeout_s=5)  # the "crashed" run left its events in the spool
    assert publisher.spooled == 5

    done = cli("spool", "flush", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"{JOB}: delivered" in done.stdout
    entries = redis_client.xrange(keys.events(JOB))
    assert [json.loads(fields[b"event"])["step"] for _, fields in entries] == list(range(5))
    assert not list(tmp_path.glob("*.jsonl"))


def test_spool_flush_reports_what_it_could_not_deliver(tmp_path, monkeypatch):
    publisher = EventPublisher(JOB, f"redis://127.0.0.1:{free_port()}/0", spool_dir=tmp_path)
    publisher.emit("train_log", 1, None, {"loss": 1.0})
    publisher.close(timeout_s=5)
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    done = cli("spool", "flush", str(tmp_path), "--timeout-s", "5")
    assert done.returncode == 1 and "still spooled" in done.stdout
    pytest.importorskip("redis")


def test_an_unreachable_redis_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    done = cli("status", JOB)
    assert done.returncode == 2
    assert "Redis is unreachable" in done.stderr and "Traceback" not in done.stderr
