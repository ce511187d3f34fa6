"""The demo's two training runs: Hugging Face alone, and with the loop closed."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from transformers import TrainerCallback

from scorer_worker.ranking import Decision
from scorer_worker.state import JobState

SAVE_TOTAL_LIMIT = 2
EARLY_STOPPING_PATIENCE = 2
LOOP_OUTPUT = "output"  # the loop's run: `ckpt-pipeline checkpoints <workdir>/output`
CONTROL_OUTPUT = "output-hf-alone"


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


def train_once(
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
    from remote.schema import COMPOSITE_METRIC, FALLBACK_METRIC
    from remote.spec import validate_spec
    from remote.training import build_trainer

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
