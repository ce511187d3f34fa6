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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from transformers import TrainerCallback

from scorer_worker.ranking import Decision, ScoredEval, decide
from scorer_worker.scoring import get_profile
from scorer_worker.settings import Settings
from scorer_worker.state import JobState
from scorer_worker.store import load_state

from ..testing.local_redis import INSTALL_HINT, LocalRedis

CONVERGE_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SAVE_TOTAL_LIMIT = 2
EARLY_STOPPING_PATIENCE = 2
LOOP_OUTPUT = "output"  # the loop's run: `ckpt-pipeline checkpoints <workdir>/output`
CONTROL_OUTPUT = "output-hf-alone"
STALE = ("output", CONTROL_OUTPUT, "model", "spool", "demo.db", "demo.db-wal", "demo.db-shm")


@dataclass
class RunResult:
    """One training run of the demo and what came of it."""

    label: str
    job_id: str
    metric: str
    output_dir: Path
    kept: list[str]
    loaded: str | None
    weights_match: bool | None
    stopped_at_step: int
    max_steps: int
    seconds: float
    row: dict[str, Any] | None = None
    state: JobState | None = None
    decision: Decision | None = None


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
                _train(spec, workdir, control_job, False, redis_url, client),
                _train(spec, workdir, loop_job, True, redis_url, client),
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


def _train(
    base_spec: dict[str, Any],
    workdir: Path,
    job_id: str,
    loop: bool,
    redis_url: str | None,
    client: Any,
) -> RunResult:
    """Train the demo model once, with the loop or as Hugging Face alone would."""
    from transformers import EarlyStoppingCallback, PrinterCallback, set_seed

    from producer import CheckpointEventsCallback, EventPublisher
    from remote.training import COMPOSITE_METRIC, FALLBACK_METRIC, build_trainer, validate_spec

    output = workdir / (LOOP_OUTPUT if loop else CONTROL_OUTPUT)
    metric = COMPOSITE_METRIC if loop else FALLBACK_METRIC
    spec = validate_spec(
        {
            **base_spec,
            "job_id": job_id,
            "output_dir": str(output),
            "save_total_limit": SAVE_TOTAL_LIMIT,
            "early_stopping_patience": EARLY_STOPPING_PATIENCE,
            "follow_scorer": loop,
            "metric_for_best_model": metric,
        }
    )
    label = "with the loop" if loop else "Hugging Face alone"
    click.echo(
        f"\n{label} (job {job_id}): metric_for_best_model={metric!r}, "
        f"save_total_limit={SAVE_TOTAL_LIMIT}, load_best_model_at_end=True, "
        f"EarlyStoppingCallback(early_stopping_patience={EARLY_STOPPING_PATIENCE})"
        + (", CheckpointEventsCallback(follow_scorer=True)" if loop else "")
    )
    publisher = EventPublisher(job_id, redis_url, redis_client=client, spool_dir=workdir / "spool")
    events = CheckpointEventsCallback(job_id, publisher=publisher, follow_scorer=loop)
    progress = EvalProgress(loop)
    set_seed(spec["seed"])
    # progress first: its on_log marks when an evaluation's metrics are out, before the
    # events callback waits for the decision in its own on_log.
    trainer = build_trainer(spec, [progress, events])
    trainer.remove_callback(PrinterCallback)  # our progress lines replace its raw dicts
    progress.early_stopping = next(
        cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)
    )
    started = time.monotonic()
    try:
        trainer.train()
    finally:
        publisher.close(timeout_s=30)
    seconds = time.monotonic() - started
    loaded = trainer.state.best_model_checkpoint
    stopped = trainer.state.global_step
    click.echo(
        f"  stopped at step {stopped} of {trainer.state.max_steps} after {seconds:.1f}s; "
        f"loaded {Path(loaded).name if loaded else 'the last model'}"
    )
    return RunResult(
        label=label,
        job_id=job_id,
        metric=metric,
        output_dir=output,
        kept=_checkpoint_names(output),
        loaded=Path(loaded).name if loaded else None,
        weights_match=_weights_match(trainer.model, Path(loaded)) if loaded else None,
        stopped_at_step=stopped,
        max_steps=trainer.state.max_steps,
        seconds=seconds,
    )


class EvalProgress(TrainerCallback):
    """Prints one line per evaluation: its loss, its score, Hugging Face's best, the disk.

    Printed from ``on_save``, which Hugging Face calls after it picked its best and rotated
    the checkpoints, so the line shows what rotation kept.

    Args:
        loop: the run follows the scorer; show each evaluation's score and how long its
            decision took (from the evaluation's metrics being logged to ``on_evaluate``).
    """

    def __init__(self, loop: bool) -> None:
        self.loop = loop
        self.early_stopping: Any = None  # the run's EarlyStoppingCallback, for its counter
        self._eval_out_at: float | None = None
        self._decided_s: float | None = None
        self._metrics: dict[str, Any] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Print the header of the evaluation lines."""
        score = f"{'score':>8} {'decided':>8}" if self.loop else ""
        click.echo(
            f"  {'step':>4} {'eval_loss':>9} {score}  {'best':<14} "
            f"{'on disk after rotation':<29} early stopping"
        )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        """Note when an evaluation's metrics are out (the loop's wait starts after this)."""
        if logs and "eval_loss" in logs:
            self._eval_out_at = time.perf_counter()

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any
    ) -> None:
        """Keep the evaluation's metrics, its score included, for the line ``on_save`` prints."""
        if self._eval_out_at is not None:
            self._decided_s = time.perf_counter() - self._eval_out_at
        self._metrics = dict(metrics or {})

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Print the evaluation's line, now that Hugging Face picked its best and rotated."""
        from producer.callback import SCORE_METRIC

        eval_loss = self._metrics.get("eval_loss", math.nan)
        score = ""
        if self.loop:
            value = self._metrics.get(SCORE_METRIC, math.nan)
            waited = f"{1000 * self._decided_s:.0f} ms" if self._decided_s is not None else "-"
            score = f"{value:>8.4f} {waited:>8}"
        best = Path(state.best_model_checkpoint or "-").name
        kept = " ".join(_checkpoint_names(Path(args.output_dir)))
        click.echo(
            f"  {state.global_step:>4} {eval_loss:>9.4f} {score}  {best:<14} "
            f"{kept:<29} {self._patience(control)}"
        )

    def _patience(self, control: Any) -> str:
        stopping = self.early_stopping
        counter = getattr(stopping, "early_stopping_patience_counter", 0)
        if not counter:
            return ""
        patience = stopping.early_stopping_patience
        verdict = ": stop" if control.should_training_stop and counter >= patience else ""
        return f"{counter}/{patience} without improvement{verdict}"


def _checkpoint_names(output_dir: Path) -> list[str]:
    from producer.callback import retained_checkpoints

    return retained_checkpoints(output_dir)


def _weights_match(model: Any, checkpoint: Path) -> bool | None:
    """True when every tensor of ``checkpoint``'s weights equals the model's (None: unknown)."""
    import torch
    from safetensors.torch import load_file

    weights = checkpoint / "model.safetensors"
    if not weights.exists():
        return None
    saved = load_file(str(weights))
    current = model.state_dict()
    # Tied tensors are saved once: compare what the file holds.
    return all(name in current and torch.equal(current[name].cpu(), saved[name]) for name in saved)


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
