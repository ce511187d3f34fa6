"""The demo's picture: train/eval loss and score per step, with both picks marked."""

from __future__ import annotations

import math
from pathlib import Path

from .ranking import Decision
from .state import JobState


def plot_run(state: JobState, decision: Decision, path: Path) -> Path:
    """Write a PNG of train loss, eval loss and score, marking the best checkpoints."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = sorted((s, r.loss) for s, r in state.train.items() if _finite(r.loss))
    evals = [e for e in decision.evals if _finite(e.eval_loss)]
    scored = [e for e in decision.evals if math.isfinite(e.score)]
    fig, loss_axis = plt.subplots(figsize=(9, 5))
    loss_axis.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", alpha=0.7)
    loss_axis.plot(
        [e.step for e in evals],
        [e.eval_loss for e in evals],
        "o-",
        label="eval loss",
        color="tab:orange",
    )
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    score_axis = loss_axis.twinx()
    score_axis.plot(
        [e.step for e in scored],
        [e.score for e in scored],
        "s--",
        label="score (lower is better)",
        color="tab:green",
    )
    score_axis.set_ylabel("multi-metric score")
    if decision.best:
        loss_axis.axvline(
            decision.best.step,
            color="tab:green",
            linewidth=2,
            label=f"best by score: step {decision.best.step}",
        )
    by_loss = decision.best_by_eval_loss
    if by_loss and (decision.best is None or by_loss.step != decision.best.step):
        loss_axis.axvline(
            by_loss.step,
            color="tab:red",
            linestyle=":",
            linewidth=2,
            label=f"lowest eval loss: step {by_loss.step}",
        )
    handles = loss_axis.get_legend_handles_labels()
    extra = score_axis.get_legend_handles_labels()
    fig.legend(handles[0] + extra[0], handles[1] + extra[1], loc="lower center", ncol=3, fontsize=8)
    loss_axis.set_title(
        f"job {state.job_id}: checkpoint selection ({decision.profile.name} profile)"
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # leave room for the legend below the axes
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
