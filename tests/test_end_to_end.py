"""End to end: a real Trainer with the callback, a private redis-server, plain `rq worker`
processes in burst mode, ending in the SQLite row; the offline listing agrees with the row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import PrinterCallback, set_seed

from ckpt_pipeline.demo.model import prepare_overfit_demo
from producer import CheckpointEventsCallback, EventPublisher
from remote.training import build_trainer
from sink.writers.sqlite import SqliteWriter

pytestmark = pytest.mark.slow
JOB, TOKEN = "e2e-job", "secret-token-e2e"


def cli(*args: str, env: dict[str, str]) -> str:
    """Run `ckpt-pipeline ARGS` as a user would and return its output."""
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


PROCFILE_WORKER = ("--worker-class", "ckpt_pipeline.worker.PipelineWorker")


def rq_worker(queue: str, env: dict[str, str], *flags: str) -> None:
    """Run an `rq worker QUEUE --burst` process: plain, or with ``flags`` (e.g. the Procfile's)."""
    done = subprocess.run(
        ["rq", "worker", queue, "--burst", "--url", env["REDIS_URL"], *flags],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def converge(env: dict[str, str], rounds: int = 15) -> None:
    """Alternate `ckpt-pipeline pump --burst` with burst workers until nothing is behind."""
    for _ in range(rounds):
        out = cli("pump", "--burst", env=env)
        if " 0 drains and 0 flushes" in out and "0 jobs" in out:
            return
        rq_worker("scoring", env)
        rq_worker("sink", env)
    pytest.fail("pipeline did not converge")


def train_run(workdir: Path, job_id: str, redis_url: str, **overrides) -> Path:
    spec = {**prepare_overfit_demo(workdir, job_id), "num_train_epochs": 16, "save_total_limit": 4}
    spec.update(overrides)
    set_seed(spec["seed"])
    publisher = EventPublisher(job_id, redis_url, spool_dir=workdir / "spool")
    trainer = build_trainer(spec, [CheckpointEventsCallback(job_id, publisher=publisher)])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    publisher.close(timeout_s=30)
    assert publisher.spooled == 0
    return Path(spec["output_dir"])


@pytest.fixture
def env(pipeline_env) -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture(params=["one-server", "cluster"])
def sides(request, env) -> tuple[dict[str, str], object]:
    """The environment and a data-side client: every job's keys on the private server, or
    on a private 3-master Redis Cluster (``CKPT_DATA_REDIS_URL``; RQ stays on the server)."""
    if request.param == "one-server":
        return env, request.getfixturevalue("redis_client")
    request.getfixturevalue("cluster_env")
    return dict(os.environ), request.getfixturevalue("cluster_client")


def test_trainer_to_row_and_listing_agree(tmp_path, sides):
    env, redis_client = sides  # the data side
    cli("register", JOB, TOKEN, "--create-row", env=env)
    data_url = env.get("CKPT_DATA_REDIS_URL") or env["REDIS_URL"]
    output = train_run(tmp_path, JOB, data_url)  # producers publish to the data side
    converge(env)

    db = env["CKPT_SINK"].removeprefix("sqlite:///")
    writer = SqliteWriter(db)
    row = writer.read_job(JOB)
    metrics = writer.read_metrics(JOB)
    listing = json.loads(cli("checkpoints", str(output), "--json", env=env))
    best = next(item for item in listing if item["is_best"])
    folders = sorted(p.name for p in output.glob("checkpoint-*"))

    assert row["status"] == "completed"
    assert row["progress"] == 100.0
    assert row["best_checkpoint_path"] == str(output.resolve() / best["name"])
    assert row["best_checkpoint_step"] == best["step"]
    assert row["best_checkpoint_score"] == pytest.approx(best["score"], abs=1e-12)
    assert row["best_score_breakdown"]["score"] == pytest.approx(best["score"], abs=1e-12)
    assert best["name"] in folders and len(folders) == 4  # only retained checkpoints compete
    assert row["scoring_version"] >= 1
    assert [m["step"] for m in metrics] == sorted({m["step"] for m in metrics})
    assert any(m["eval_loss"] is not None and m["train_loss"] is not None for m in metrics)
    assert redis_client.xlen(f"ckpt:{{{JOB}}}:events") == 0  # drained and trimmed
    assert redis_client.xlen(f"ckpt:{{{JOB}}}:dead") == 0

    status = cli("status", JOB, "--json", env=env)
    report = json.loads(status)
    assert report["row"]["best_checkpoint_step"] == best["step"]
    assert report["pipeline"]["lag_events"] == 0 and report["pipeline"]["lag_versions"] == 0
    assert TOKEN not in status

    # Replaying the finished run as another job gives the same decision (back-fill path).
    cli("register", "e2e-replay", "other-token", "--create-row", env=env)
    cli("replay", "e2e-replay", str(output), env=env)
    converge(env)
    replayed = writer.read_job("e2e-replay")
    same = ("best_checkpoint_path", "best_checkpoint_step", "best_checkpoint_score",
            "best_eval_loss", "best_step", "current_step", "status", "loss",
            "eval_loss")  # fmt: skip
    for column in same:
        assert replayed[column] == row[column], column


def test_plain_rq_worker_commands_run_the_tasks(tmp_path, env, redis_client):
    """`rq worker scoring` and `rq worker sink` import and run our tasks with no extra flags."""
    cli("register", "plain-job", TOKEN, "--create-row", env=env)
    publisher = EventPublisher("plain-job", env["REDIS_URL"], spool_dir=tmp_path)
    publisher.emit("train_begin", 0, 0.0, info={"max_steps": 10, "resumed_from_step": 0})
    publisher.emit("train_log", 5, 0.5, {"loss": 1.0})
    publisher.emit("eval", 5, 0.5, {"eval_loss": 1.1})
    publisher.close()
    cli("pump", "--burst", env=env)
    rq_worker("scoring", env)
    # A plain worker was given no flush route (the PipelineWorker's composition): the pump,
    # level-triggered, asks for the flush on its next pass.
    assert redis_client.llen("rq:queue:sink") == 0
    cli("pump", "--burst", env=env)
    rq_worker("sink", env)
    row = SqliteWriter(env["CKPT_SINK"].removeprefix("sqlite:///")).read_job("plain-job")
    assert row["status"] == "running"
    assert row["best_checkpoint_step"] == 5
    assert row["eval_loss"] == 1.1
