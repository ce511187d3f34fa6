"""Text tables of a decision and a row (demo and status output)."""

from __future__ import annotations

import math
from typing import Any

from .ranking import Decision

ROW_FIELDS = (
    "status", "current_step", "progress", "loss", "eval_loss", "best_eval_loss", "best_step",
    "best_checkpoint_path", "best_checkpoint_score", "best_checkpoint_step",
    "epochs_without_improvement", "loss_trend", "scoring_version",
)  # fmt: skip


def format_evals(decision: Decision) -> str:
    """Return a table of every evaluation with its score breakdown and pick marks."""
    best = decision.best.step if decision.best else None
    lowest = decision.best_by_eval_loss.step if decision.best_by_eval_loss else None
    lines = [
        f"Evaluations, scored with profile {decision.profile.name} v{decision.profile.version} "
        "(lower is better)",
        f"{'step':>5} {'epoch':>6} {'eval_loss':>9} {'train_loss':>10} {'loss_t':>7} {'gap_t':>7} "
        f"{'ppl_t':>7} {'bonus':>6} {'ewi':>4} {'score':>8}  pick",
    ]
    for e in decision.evals:
        b = e.breakdown
        marks = ("<- best by score " if e.step == best else "") + (
            "<- lowest eval_loss" if e.step == lowest else ""
        )
        lines.append(
            f"{e.step:>5} {_num(e.epoch, 2):>6} {_num(e.eval_loss):>9} {_num(e.train_loss):>10} "
            f"{_num(b.get('eval_loss_term')):>7} {_num(b.get('gap_term')):>7} "
            f"{_num(b.get('perplexity_term')):>7} {_num(b.get('improvement_bonus'), 2):>6} "
            f"{e.epochs_without_improvement:>4} {_num(e.score):>8}  {marks}"
        )
    return "\n".join(lines)


def format_picks(decision: Decision) -> str:
    """Return the eval_loss-only pick beside the multi-metric pick."""
    lines = ["Picks"]
    for label, pick in (
        ("eval_loss only", decision.best_by_eval_loss),
        ("multi-metric", decision.best),
    ):
        if pick is None:
            lines.append(f"  {label:<15} none")
            continue
        lines.append(
            f"  {label:<15} checkpoint-{pick.step} (step {pick.step}, "
            f"eval_loss {pick.eval_loss:.4f}, "
            f"train_loss {_num(pick.train_loss)}, score {pick.score:.4f})"
        )
    same = (
        decision.best
        and decision.best_by_eval_loss
        and decision.best.step == decision.best_by_eval_loss.step
    )
    if not same:
        lines.append("  The lowest-eval-loss checkpoint is penalised for its train/eval gap.")
    return "\n".join(lines)


def format_row(row: dict[str, Any]) -> str:
    """Return the main columns of a ``local_training_jobs`` row."""
    lines = ["Final row in local_training_jobs"]
    lines += [f"  {name:<27} {row.get(name)}" for name in ROW_FIELDS]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"
