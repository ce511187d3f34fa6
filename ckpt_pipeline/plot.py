"""The demo's picture: train/eval loss and score per step, both picks and the early stops."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scorer_worker.ranking import Decision
from scorer_worker.state import JobState


def plot_run(
    state: JobState,
    decision: Decision,
    path: Path,
    *,
    stops: Sequence[tuple[str, int]] = (),
    control: tuple[JobState, Decision] | None = None,
) -> Path:
    """Write a PNG of train loss, eval loss and score, marking the best checkpoints.

    Args:
        state: the run's state.
        decision: its decision.
        path: the PNG to write.
        stops: (label, step) of each early stop to mark; the first is this run's, the
            second (if any) the control's.
        control: another run of the same model (Hugging Face alone), drawn faintly behind,
            so the curves go on where it trained longer.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, loss_axis = plt.subplots(figsize=(9, 5.2))
    score_axis = loss_axis.twinx()
    faint = _plot_curves(loss_axis, score_axis, *control, faint=True) if control else []
    handles = _plot_curves(loss_axis, score_axis, state, decision, faint=False) + faint
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("loss")
    score_axis.set_ylabel("multi-metric score (lower is better)")
    # The picks go over the stops: the lowest eval loss is often where the loop stopped.
    if decision.best:
        handles.append(
            loss_axis.axvline(
                decision.best.step,
                color="tab:green",
                linewidth=2.5,
                zorder=4,
                label=f"best by score: step {decision.best.step}",
            )
        )
    by_loss = decision.best_by_eval_loss
    if by_loss and (decision.best is None or by_loss.step != decision.best.step):
        handles.append(
            loss_axis.axvline(
                by_loss.step,
                color="tab:red",
                linestyle=(0, (2, 2)),
                linewidth=2.5,
                zorder=4,
                label=f"lowest eval loss: step {by_loss.step}",
            )
        )
    handles += _mark_stops(loss_axis, stops)
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    loss_axis.set_title(
        f"job {state.job_id}: checkpoint selection and early stop ({decision.profile.name} profile)"
    )
    fig.tight_layout(rect=(0, 0.13, 1, 1))  # leave room for the legend below the axes
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_curves(
    loss_axis: Any, score_axis: Any, state: JobState, decision: Decision, *, faint: bool
) -> list[Any]:
    """Draw train loss, eval loss and score of one run; return the legend's handles.

    A faint run is the control: drawn first (beneath), its train loss left out of the legend.
    """
    train = sorted((s, r.loss) for s, r in state.train.items() if _finite(r.loss))
    evals = [e for e in decision.evals if _finite(e.eval_loss)]
    scored = [e for e in decision.evals if math.isfinite(e.score)]
    alpha = 0.3 if faint else 1.0
    suffix = ", Hugging Face alone" if faint else ""
    handles = []
    if train:
        (line,) = loss_axis.plot(
            *zip(*train, strict=True),
            color="tab:blue",
            alpha=0.25 if faint else 0.7,
            label="train loss",
        )
        handles += [] if faint else [line]
    (line,) = loss_axis.plot(
        [e.step for e in evals],
        [e.eval_loss for e in evals],
        "o:" if faint else "o-",
        color="tab:orange",
        alpha=alpha,
        label=f"eval loss{suffix}",
    )
    handles.append(line)
    (line,) = score_axis.plot(
        [e.step for e in scored],
        [e.score for e in scored],
        "s:" if faint else "s--",
        color="tab:green",
        alpha=alpha,
        label=f"score{suffix}",
    )
    return [*handles, line]


def _mark_stops(axis: Any, stops: Sequence[tuple[str, int]]) -> list[Any]:
    """Draw a line at each early stop, named at the top, and shade the steps between two
    stops (the training the first run saved); return the legend's handles."""
    handles = []
    for index, (label, step) in enumerate(stops):
        line = axis.axvline(
            step,
            color="black" if index == 0 else "dimgray",
            linestyle="-" if index == 0 else "--",
            linewidth=1.2,
            zorder=3,
            label=f"{label} at step {step}",
        )
        handles.append(line)
        axis.annotate(
            "stop" if index == 0 else "stop without the loop",
            xy=(step, 1.0),
            xycoords=("data", "axes fraction"),
            # The later stop is near the right edge: its name goes to the left of its line.
            xytext=(3, -12) if index == 0 else (-3, -12),
            textcoords="offset points",
            ha="left" if index == 0 else "right",
            fontsize=8,
            color=line.get_color(),
        )
    if len(stops) > 1 and stops[1][1] > stops[0][1]:
        span = axis.axvspan(
            stops[0][1],
            stops[1][1],
            color="gray",
            alpha=0.12,
            zorder=0,
            label=f"steps the loop did not train ({stops[1][1] - stops[0][1]})",
        )
        handles.append(span)
    return handles


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
