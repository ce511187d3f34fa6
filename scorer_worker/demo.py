"""``ckpt-pipeline demo``: the whole pipeline on one machine, with no configuration.

A private ``redis-server``, a SQLite row, a tiny GPT-2-style model trained until it
overfits, the pump and workers in a separate process, and a report: every evaluation with
its score breakdown, the ``eval_loss``-only pick beside the multi-metric pick, the final row
and a plot.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .local_redis import INSTALL_HINT, LocalRedis
from .ranking import Decision, decide
from .scoring import get_profile
from .settings import Settings
from .state import JobState
from .store import load_state

CONVERGE_TIMEOUT_S = 60.0


def run_demo(workdir: Path) -> dict[str, Any]:
    """Run the demo in ``workdir`` (recreated) and print the report.

    Returns:
        The final row, for tests.
    """
    workdir = workdir.resolve()
    for stale in ("output", "model", "demo.db", "demo.db-wal", "demo.db-shm", "redis"):
        target = workdir / stale
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(
            missing_ok=True
        )
    workdir.mkdir(parents=True, exist_ok=True)
    with _redis_backend(workdir) as (redis_url, client):
        env = {
            **os.environ,
            "REDIS_URL": redis_url or "",
            "CKPT_SINK": f"sqlite:///{workdir / 'demo.db'}",
        }
        os.environ.update({k: env[k] for k in ("REDIS_URL", "CKPT_SINK")})
        settings = Settings.from_env()
        job_id, token = f"demo-{int(time.time())}", secrets.token_hex(16)
        _create_job(settings, client, job_id, token)
        with _workers(env, redis_url is not None):
            _train(workdir, job_id, redis_url, client, settings)
            row = _wait_for_row(settings, client, job_id)
        state = load_state(client, job_id)
        decision = decide(state, get_profile(state.profile))
        _report(workdir, state, decision, row)
        return row


@contextlib.contextmanager
def _redis_backend(workdir: Path) -> Iterator[tuple[str | None, Any]]:
    from .connection import connect

    try:
        server = LocalRedis(workdir / "redis").start()
    except FileNotFoundError:
        click.echo(f"redis-server is not installed: {INSTALL_HINT}.", err=True)
        click.echo("Falling back to an in-process fakeredis server (same process only).", err=True)
        import fakeredis

        yield None, fakeredis.FakeRedis(server=fakeredis.FakeServer())
        return
    click.echo(f"private redis-server on {server.url}")
    try:
        yield server.url, connect(Settings(redis_url=server.url))
    finally:
        server.stop()


def _create_job(settings: Settings, client: Any, job_id: str, token: str) -> None:
    from sink.writers.sqlite import SqliteWriter

    from .registry import register_job

    writer = SqliteWriter(settings.sink_url.removeprefix("sqlite:///"))
    writer.ensure_schema()
    writer.create_job(job_id, token, model_name="tiny-gpt2-demo")
    writer.close()
    register_job(client, job_id, token)
    click.echo(f"job {job_id}: pending row created in {settings.sink_url}, job registered")


@contextlib.contextmanager
def _workers(env: dict[str, str], separate_process: bool) -> Iterator[None]:
    if not separate_process:
        yield  # fakeredis lives in this process: the workers run here after training
        return
    command = [sys.executable, "-m", "scorer_worker.cli", "work"]
    process = subprocess.Popen(command, env=env)
    click.echo(f"pump + scoring + sink workers running (pid {process.pid})")
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _train(
    workdir: Path, job_id: str, redis_url: str | None, client: Any, settings: Settings
) -> None:
    from transformers import PrinterCallback, set_seed
    from transformers.utils import logging as hf_logging

    from producer import CheckpointEventsCallback, EventPublisher
    from remote.tiny import prepare_overfit_demo
    from remote.training import build_trainer, validate_spec

    from .progress import DemoProgress

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    spec = validate_spec(prepare_overfit_demo(workdir, job_id))
    publisher = EventPublisher(job_id, redis_url, redis_client=client, spool_dir=workdir / "spool")
    set_seed(spec["seed"])
    progress = DemoProgress(settings, job_id)
    trainer = build_trainer(spec, [CheckpointEventsCallback(job_id, publisher=publisher), progress])
    trainer.remove_callback(PrinterCallback)  # our progress lines replace its raw dicts
    click.echo(f"training a tiny GPT-2 ({spec['num_train_epochs']} epochs) until it overfits ...")
    started = time.monotonic()
    trainer.train()
    publisher.close(timeout_s=30)
    click.echo(f"training done in {time.monotonic() - started:.1f}s")
    if redis_url is None:
        from .runner import run_all_in_one

        run_all_in_one(client, settings, burst=True)


def _wait_for_row(settings: Settings, client: Any, job_id: str) -> dict[str, Any]:
    from .status import job_status

    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    while True:
        report = job_status(settings, client, job_id)
        pipeline, row = report["pipeline"], report["row"] or {}
        done = pipeline["lag_events"] == 0 and pipeline["lag_versions"] == 0
        if done and row.get("status") in ("completed", "failed"):
            return row
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the pipeline did not converge in {CONVERGE_TIMEOUT_S}s: {pipeline}"
            )
        time.sleep(0.2)


def _report(workdir: Path, state: JobState, decision: Decision, row: dict[str, Any]) -> None:
    from .listing import list_checkpoints
    from .plot import plot_run
    from .report import format_evals, format_picks, format_row

    click.echo("")
    click.echo(format_evals(decision))
    click.echo("")
    click.echo(format_picks(decision))
    click.echo("")
    click.echo(format_row(row))
    listing = list_checkpoints(workdir / "output")
    offline_best = next((c["name"] for c in listing if c["is_best"]), None)
    agrees = offline_best is not None and str(row.get("best_checkpoint_path", "")).endswith(
        offline_best
    )
    click.echo(
        f"\n`ckpt-pipeline checkpoints {workdir / 'output'}` picks {offline_best}: "
        f"{'agrees with the row' if agrees else 'DISAGREES with the row'}"
    )
    plot = plot_run(state, decision, workdir / "demo.png")
    click.echo(f"plot written to {plot}")
