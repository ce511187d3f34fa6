"""End to end into PostgreSQL: a real Trainer with the callback, a private redis-server,
plain `rq worker` processes in burst mode, and a private PostgreSQL server holding the
platform's row (created by an INSERT, as the platform does) after `run_migrations`."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ckpt_pipeline.testing.local_postgres import LocalPostgres
from producer import EventPublisher
from scorer_worker.store import load_state
from sink.migrate import run_migrations
from sink.writers.postgres import PostgresWriter
from tests.test_end_to_end import PROCFILE_WORKER, cli, converge, rq_worker, train_run

pytestmark = pytest.mark.slow
TOKEN = "secret-token-pg-e2e"
PLATFORM_CONFIG = {"lr": 0.0005, "note": "set by the platform"}


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    """One private PostgreSQL server for the module."""
    with LocalPostgres() as pg:
        yield pg


@pytest.fixture
def sink_url(postgres: LocalPostgres) -> str:
    """A fresh, migrated database."""
    url = postgres.create_database(f"e2e_{uuid.uuid4().hex[:12]}")
    run_migrations(url)
    return url


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch, redis_server, redis_client, sink_url: str, tmp_path: Path
) -> dict[str, str]:
    """The environment of every process: the private Redis and PostgreSQL."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("CKPT_SINK", sink_url)
    monkeypatch.setenv("CKPT_SPOOL_DIR", str(tmp_path / "spool"))
    return dict(os.environ)


def create_platform_row(url: str, job_id: str, token: str) -> None:
    """Insert the pending row the way the platform does."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO local_training_jobs (id, job_token, model_name, status, config) "
            "VALUES (%s, %s, 'tiny-gpt2', 'pending', %s)",
            (job_id, token, json.dumps(PLATFORM_CONFIG)),
        )


def test_trainer_to_postgres_row(tmp_path, env, redis_client, sink_url):
    job = str(uuid.uuid4())
    create_platform_row(sink_url, job, TOKEN)
    cli("register", job, TOKEN, env=env)
    output = train_run(tmp_path, job, env["REDIS_URL"])
    converge(env)

    writer = PostgresWriter(sink_url)
    row, metrics = writer.read_job(job), writer.read_metrics(job)
    writer.close()
    listing = json.loads(cli("checkpoints", str(output), "--json", env=env))
    best = next(item for item in listing if item["is_best"])
    state = load_state(redis_client, job)

    assert row["status"] == "completed" and row["progress"] == 100.0
    assert row["best_checkpoint_path"] == str(output.resolve() / best["name"])
    assert row["best_checkpoint_step"] == best["step"]
    assert row["best_checkpoint_score"] == pytest.approx(best["score"], abs=1e-12)
    assert row["best_score_breakdown"]["score"] == pytest.approx(best["score"], abs=1e-12)
    assert row["scoring_version"] == state.version
    assert row["model_name"] == "tiny-gpt2"  # the platform's columns are left alone
    steps = [m["step"] for m in metrics]
    assert steps == sorted(set(steps)) == sorted(set(state.train) | set(state.evals))
    assert any(m["eval_loss"] is not None and m["train_loss"] is not None for m in metrics)
    with psycopg.connect(sink_url) as conn:
        [(config, duplicates)] = conn.execute(
            "SELECT config, (SELECT count(*) - count(DISTINCT step) FROM local_training_metrics "
            "WHERE job_id = %s) FROM local_training_jobs WHERE id = %s",
            (job, job),
        ).fetchall()
    assert config == PLATFORM_CONFIG and duplicates == 0

    status = cli("status", job, "--json", env=env)
    report = json.loads(status)
    assert report["row"]["id"] == job
    assert report["row"]["best_checkpoint_step"] == best["step"]
    assert report["pipeline"]["lag_events"] == 0 and report["pipeline"]["lag_versions"] == 0
    assert report["pipeline"]["sink_error"] is None
    assert TOKEN not in status and "job_token" not in report["row"]


def test_wrong_token_is_recorded_shown_and_not_retried(tmp_path, env, sink_url):
    job = str(uuid.uuid4())
    create_platform_row(sink_url, job, "the-platform-token")
    cli("register", job, TOKEN, env=env)  # not the row's token
    publisher = EventPublisher(job, env["REDIS_URL"], spool_dir=tmp_path)
    publisher.emit("train_begin", 0, 0.0, info={"max_steps": 10, "resumed_from_step": 0})
    publisher.emit("train_log", 5, 0.5, {"loss": 1.0})
    publisher.emit("eval", 5, 0.5, {"eval_loss": 1.1})
    publisher.close()

    cli("pump", "--burst", env=env)
    rq_worker("scoring", env, *PROCFILE_WORKER)  # its drain enqueues the flush itself
    rq_worker("sink", env, *PROCFILE_WORKER)
    # The failure is permanent: the next passes enqueue no flush, so none is retried.
    for _ in range(2):
        assert " 0 drains and 0 flushes" in cli("pump", "--burst", env=env)

    status = cli("status", job, "--json", env=env)
    report = json.loads(status)
    assert report["pipeline"]["sink_error_kind"] == "permanent"
    assert "token does not match" in report["pipeline"]["sink_error"]
    assert report["row"]["status"] == "pending" and report["row"]["scoring_version"] is None
    assert TOKEN not in status and "the-platform-token" not in status
