"""``ckpt-pipeline demo``: the whole pipeline on one machine, with no configuration.

A private ``redis-server``, a SQLite row per job, a tiny GPT-2-style model trained until it
overfits, the pump and workers in a separate process, and a report. The model is trained
twice with the same seed, ``save_total_limit=2``, ``load_best_model_at_end`` and an
``EarlyStoppingCallback``:

- *Hugging Face alone*: ``metric_for_best_model="eval_loss"``; the pipeline scores the run but
  Hugging Face does not hear of it, so rotation, the model loaded at the end and the early
  stop all follow the eval loss;
- *with the loop*: ``metric_for_best_model="checkpoint_score"`` and
  ``CheckpointEventsCallback(follow_scorer=True)``, so that every evaluation waits for the
  scorer's decision and the same machinery follows the multi-metric score.

The report puts what each run kept on disk, loaded and stopped at side by side, then shows
the loop's job as the pipeline saw it: every evaluation with its score breakdown, the
``eval_loss``-only pick beside the multi-metric pick, the final row, and a plot.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from scorer_worker.ranking import Decision, ScoredEval, decide
from scorer_worker.scoring import get_profile
from scorer_worker.settings import Settings
from scorer_worker.store import load_state

from ..testing.local_redis import INSTALL_HINT, LocalRedis
from .training import CONTROL_OUTPUT, RunResult, train_once

CONVERGE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
STALE = ("output", CONTROL_OUTPUT, "model", "spool", "demo.db", "demo.db-wal", "demo.db-shm")


def run_demo(workdir: Path) -> dict[str, Any]:
    """Run the demo in ``workdir`` (recreated) and print the report.

    Returns:
        The final row of the loop's job, for tests.
    """
    workdir = workdir.resolve()
    for stale in (*STALE, "redis"):
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
        loop_job = f"demo-{int(time.time())}"
        control_job = f"{loop_job}-hf"
        _create_jobs(settings, client, [loop_job, control_job])
        from transformers.utils import logging as hf_logging

        from .model import prepare_overfit_demo

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        # One model and data set for both runs: same weights, same data, same seed.
        spec = prepare_overfit_demo(workdir, loop_job)

        def train_both() -> list[RunResult]:
            runs = [
                train_once(spec, workdir, control_job, False, redis_url, client),
                train_once(spec, workdir, loop_job, True, redis_url, client),
            ]
            for run in runs:  # while the workers still run: they write the rows
                run.row = _wait_for_row(settings, client, run.job_id)
            return runs

        runs = _beside_workers(env, redis_url is not None, client, settings, train_both)
        for run in runs:
            run.state = load_state(client, run.job_id)
            run.decision = decide(run.state, get_profile(run.state.profile))
        _report(workdir, *runs)
        return runs[1].row


@contextlib.contextmanager
def _redis_backend(workdir: Path) -> Iterator[tuple[str | None, Any]]:
    from scorer_worker.connection import connect

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


def _create_jobs(settings: Settings, client: Any, job_ids: list[str]) -> None:
    from scorer_worker.registry import register_job
    from sink.writers.sqlite import SqliteWriter

    writer = SqliteWriter(settings.sink_url.removeprefix("sqlite:///"))
    writer.ensure_schema()
    for job_id in job_ids:
        token = secrets.token_hex(16)
        writer.create_job(job_id, token, model_name="tiny-gpt2-demo")
        register_job(client, job_id, token)
    writer.close()
    click.echo(
        f"jobs {', '.join(job_ids)}: pending rows created in {settings.sink_url}, jobs registered"
    )


def _beside_workers(
    env: dict[str, str],
    separate_process: bool,
    client: Any,
    settings: Settings,
    work: Callable[[], list[RunResult]],
) -> list[RunResult]:
    """Run ``work`` (the training) while the pump and the workers run.

    With a real ``redis-server`` they run in their own process, as in production. With
    fakeredis they must share this process: the training then runs in a thread, because rq's
    worker installs signal handlers, which only the main thread may do.
    """
    if separate_process:
        command = [sys.executable, "-m", "ckpt_pipeline.cli", "work"]
        process = subprocess.Popen(command, env=env)
        click.echo(f"pump + scoring + sink workers running (pid {process.pid})")
        try:
            return work()
        finally:
            _stop_workers(process)
    from ..runner import run_all_in_one

    done = threading.Event()
    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["runs"] = work()
        except BaseException as exc:  # re-raised in the main thread below
            outcome["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=train, name="demo-training", daemon=True)
    thread.start()
    click.echo("pump + scoring + sink workers running in this process (fakeredis)")
    run_all_in_one(client, settings, stop=done)
    thread.join()
    run_all_in_one(client, settings, burst=True)  # what the end of training handed over
    if "error" in outcome:
        raise outcome["error"]
    return outcome["runs"]


def _stop_workers(process: subprocess.Popen) -> None:
    """Stop the workers' process: SIGTERM, then SIGKILL if it has not ended in time.

    Killing is safe (DESIGN section 6: state and cursor commit together), and the demo must
    not hang on a worker that is slow to honour SIGTERM on a busy machine.
    """
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        click.echo(f"workers still running {STOP_TIMEOUT_S:g}s after SIGTERM: killed", err=True)
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


def _wait_for_row(settings: Settings, client: Any, job_id: str) -> dict[str, Any]:
    from ..status import job_status

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


def composite_best(decision: Decision) -> ScoredEval | None:
    """The lowest score among all of a run's evaluations, whether or not its folder survived."""
    scored = [e for e in decision.evals if math.isfinite(e.score)]
    return min(scored, key=lambda e: (e.score, e.step), default=None)


def _report(workdir: Path, control: RunResult, loop: RunResult) -> None:
    from ..listing import list_checkpoints
    from ..plot import plot_run
    from ..report import format_evals, format_picks, format_row, format_side_by_side

    assert loop.state is not None and loop.decision is not None
    assert control.state is not None and control.decision is not None
    click.echo("")
    click.echo(format_side_by_side(control, loop, composite_best(loop.decision)))
    click.echo("")
    click.echo(f"The loop's job {loop.job_id}, as the pipeline saw it")
    click.echo(format_evals(loop.decision))
    click.echo("")
    click.echo(format_picks(loop.decision))
    click.echo("")
    click.echo(format_row(loop.row or {}))
    listing = list_checkpoints(loop.output_dir)
    offline_best = next((c["name"] for c in listing if c["is_best"]), None)
    agrees = offline_best is not None and str(
        (loop.row or {}).get("best_checkpoint_path", "")
    ).endswith(offline_best)
    click.echo(
        f"\n`ckpt-pipeline checkpoints {loop.output_dir}` picks {offline_best}: "
        f"{'agrees with the row' if agrees else 'DISAGREES with the row'}"
    )
    stops = [("the loop stopped", loop.stopped_at_step)]
    if control.stopped_at_step != loop.stopped_at_step:
        stops.append(("Hugging Face alone stopped", control.stopped_at_step))
    plot = plot_run(
        loop.state,
        loop.decision,
        workdir / "demo.png",
        stops=stops,
        control=(control.state, control.decision),
    )
    click.echo(f"plot written to {plot}")
