"""Live progress lines for the demo: training numbers beside what the row says right now."""

from __future__ import annotations

from typing import Any

import click
from transformers import TrainerCallback

from .settings import Settings


class DemoProgress(TrainerCallback):
    """Prints each training log and evaluation, with the live row's best checkpoint."""

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        """Print the training loss of each log step."""
        logs = logs or {}
        if "loss" in logs:
            click.echo(
                f"  step {state.global_step:>4}/{state.max_steps}  train loss {logs['loss']:.4f}"
            )

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs
    ) -> None:
        """Print the eval loss and the best checkpoint the row names so far."""
        eval_loss = (metrics or {}).get("eval_loss", float("nan"))
        click.echo(f"  step {state.global_step:>4}  eval loss {eval_loss:.4f}   {self._live_row()}")

    def _live_row(self) -> str:
        from sink.writers import writer_from_settings

        writer = writer_from_settings(self.settings)
        try:
            row = writer.read_job(self.job_id) or {}
        finally:
            writer.close()
        best = row.get("best_checkpoint_path")
        if not best:
            return f"row: {row.get('status', '?')}"
        name, score = best.rsplit("/", 1)[-1], row["best_checkpoint_score"]
        return f"row: {row['status']}, best so far {name} (score {score:.4f})"
