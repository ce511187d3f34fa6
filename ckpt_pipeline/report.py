"""Text tables of a decision, a row and the demo's two runs (demo output)."""

from __future__ import annotations

import math
from typing import Any

from scorer_worker.ranking import Decision, ScoredEval

ROW_FIELDS = (
    "status", "current_step", "progress", "loss", "eval_loss", "best_eval_loss", "best_epoch",
    "best_step", "best_checkpoint_path", "best_checkpoint_score", "best_checkpoint_step",
    "best_checkpoint_epoch", "epochs_without_improvement", "loss_trend", "scoring_version",
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
    """Return the main columns of a ``local_training_jobs`` row and its eval-loss-only pick.

    The ``best_*`` columns all describe the multi-metric pick; the pick by eval loss alone
    is kept for comparison in ``best_score_breakdown.eval_loss_pick``.
    """
    lines = ["Final row in local_training_jobs"]
    lines += [f"  {name:<27} {row.get(name)}" for name in ROW_FIELDS]
    pick = (row.get("best_score_breakdown") or {}).get("eval_loss_pick")
    if pick:
        lines.append(
            f"  {'best_score_breakdown.eval_loss_pick':<27} step {pick.get('step')}, "
            f"epoch {_num(pick.get('epoch'), 2)}, eval_loss {_num(pick.get('eval_loss'))}, "
            f"score {_num(pick.get('score'))}"
        )
    same = row.get("best_step") is not None and row.get("best_step") == row.get(
        "best_checkpoint_step"
    )
    lines.append(
        "  best_step == best_checkpoint_step: the best_* columns name one checkpoint"
        if same
        else "  best_step != best_checkpoint_step: the best_* columns name different checkpoints"
    )
    return "\n".join(lines)


def format_side_by_side(control: Any, loop: Any, best: ScoredEval | None) -> str:
    """Return what each demo run kept on disk, loaded and stopped at, side by side.

    Args:
        control: the run of Hugging Face alone (a ``demo.RunResult``).
        loop: the run with the loop (a ``demo.RunResult``).
        best: the composite best of the loop's evaluations, folders aside.
    """
    wanted = f"checkpoint-{best.step}" if best else None
    rows = [
        ("picks by", *(f"metric_for_best_model={r.metric!r}" for r in (control, loop))),
        ("kept on disk", *(", ".join(r.kept) or "-" for r in (control, loop))),
        ("loaded at the end", *(_loaded(r) for r in (control, loop))),
        ("stopped at", *(f"step {r.stopped_at_step} of {r.max_steps}" for r in (control, loop))),
        ("training time", *(f"{r.seconds:.1f} s" for r in (control, loop))),
        ("row's best checkpoint", *(_row_pick(r.row) for r in (control, loop))),
    ]
    if wanted:
        rows.insert(
            2,
            (f"{wanted} on disk", *(_yes_no(wanted in r.kept) for r in (control, loop))),
        )
    width = max(len(label) for label, *_ in rows) + 3  # 3+ spaces split the columns
    column = max(len(text) for _, text, _ in rows) + 3
    title = (
        f"What the loop changes: the same model, data and seed, save_total_limit=2, "
        f"early stopping; the multi-metric best is {wanted or 'none'}"
    )
    lines = [title, f"  {'':<{width}}{control.label:<{column}}{loop.label}"]
    lines += [f"  {label:<{width}}{left:<{column}}{right}" for label, left, right in rows]
    return "\n".join(lines)


def _loaded(run: Any) -> str:
    if run.loaded is None:
        return "the last model"
    same = {True: "final weights equal it", False: "final weights DIFFER", None: ""}
    note = same[run.weights_match]
    return f"{run.loaded} ({note})" if note else run.loaded


def _row_pick(row: dict[str, Any] | None) -> str:
    path = (row or {}).get("best_checkpoint_path")
    if not path:
        return "none"
    return f"{str(path).rsplit('/', 1)[-1]} (score {_num(row.get('best_checkpoint_score'))})"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no: rotation deleted it"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"
