"""The row model: one list of columns, one mapping from state to row, for every writer.

``local_training_jobs`` gets one row per job (DESIGN section 5); ``local_training_metrics``
gets one row per (job_id, step), train and eval values merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scorer_worker.ranking import Decision, decide
from scorer_worker.scoring import get_profile
from scorer_worker.state import JobState


@dataclass(frozen=True)
class Column:
    """A column the sink writes, with its SQL type (PostgreSQL spelling)."""

    name: str
    sql_type: str


JOB_COLUMNS: tuple[Column, ...] = (
    Column("status", "text"),
    Column("current_step", "integer"),
    Column("current_epoch", "double precision"),
    Column("total_steps", "integer"),
    Column("total_epochs", "double precision"),
    Column("progress", "double precision"),
    Column("loss", "double precision"),
    Column("eval_loss", "double precision"),
    Column("learning_rate", "double precision"),
    Column("grad_norm", "double precision"),
    Column("perplexity", "double precision"),
    Column("train_perplexity", "double precision"),
    Column("best_eval_loss", "double precision"),
    Column("best_epoch", "double precision"),
    Column("best_step", "integer"),
    Column("best_checkpoint_score", "double precision"),
    Column("best_checkpoint_step", "integer"),
    Column("best_checkpoint_epoch", "integer"),
    Column("best_checkpoint_path", "text"),
    Column("epochs_without_improvement", "integer"),
    Column("loss_trend", "text"),
    Column("error_message", "text"),
    Column("started_at", "timestamptz"),
    Column("completed_at", "timestamptz"),
    Column("updated_at", "timestamptz"),
    Column("scoring_version", "bigint"),
    Column("best_score_breakdown", "jsonb"),
)

METRIC_COLUMNS: tuple[Column, ...] = (
    Column("job_id", "text"),
    Column("step", "integer"),
    Column("epoch", "double precision"),
    Column("train_loss", "double precision"),
    Column("eval_loss", "double precision"),
    Column("learning_rate", "double precision"),
    Column("grad_norm", "double precision"),
    Column("perplexity", "double precision"),
    Column("train_perplexity", "double precision"),
    Column("timestamp", "timestamptz"),
)

JOB_COLUMN_NAMES = tuple(c.name for c in JOB_COLUMNS)
METRIC_COLUMN_NAMES = tuple(c.name for c in METRIC_COLUMNS)
TREND_TOLERANCE = 0.01


def job_row(state: JobState, decision: Decision | None = None) -> dict[str, Any]:
    """Map a job's state to the ``local_training_jobs`` columns (all of JOB_COLUMN_NAMES).

    Non-finite numbers become None (JSON and PostgREST cannot carry them); ``loss_trend``
    says ``diverged`` instead.
    """
    decision = decision or decide(state, get_profile(state.profile))
    latest_train = _latest(state.train, lambda r: r.loss is not None)
    latest_eval = _latest(state.evals, lambda r: True)
    begin = state.latest_begin
    best, by_loss = decision.best, decision.best_by_eval_loss
    row = {
        "status": _status(state),
        "current_step": state.max_step,
        "current_epoch": _current_epoch(state),
        "total_steps": begin.max_steps if begin else None,
        "total_epochs": begin.num_train_epochs if begin else None,
        "progress": _progress(state),
        "loss": latest_train.loss if latest_train else None,
        "eval_loss": latest_eval.eval_loss if latest_eval else None,
        "learning_rate": _latest_value(state.train, "learning_rate"),
        "grad_norm": _latest_value(state.train, "grad_norm"),
        "perplexity": perplexity(latest_eval.eval_loss if latest_eval else None),
        "train_perplexity": perplexity(latest_train.loss if latest_train else None),
        "best_eval_loss": by_loss.eval_loss if by_loss else None,
        "best_epoch": by_loss.epoch if by_loss else None,
        "best_step": by_loss.step if by_loss else None,
        "best_checkpoint_score": best.score if best else None,
        "best_checkpoint_step": best.step if best else None,
        "best_checkpoint_epoch": round(best.epoch) if best and best.epoch is not None else None,
        "best_checkpoint_path": _checkpoint_path(state, best.checkpoint if best else None),
        "epochs_without_improvement": (
            decision.evals[-1].epochs_without_improvement if decision.evals else None
        ),
        "loss_trend": loss_trend(decision),
        "error_message": state.end.error if state.end else None,
        "started_at": iso_time(state.first_ts),
        "completed_at": iso_time(state.end.ts) if state.end else None,
        "updated_at": iso_time(state.last_ts),
        "scoring_version": state.version,
        "best_score_breakdown": json_safe(best.breakdown) if best else None,
    }
    return {name: finite_or_none(value) for name, value in row.items()}


def metric_rows(state: JobState, since_version: int = 0) -> list[dict[str, Any]]:
    """Return ``local_training_metrics`` rows for the steps changed after ``since_version``."""
    steps = {s for s, r in state.train.items() if r.changed > since_version}
    steps |= {s for s, r in state.evals.items() if r.changed > since_version}
    rows = []
    for step in sorted(steps):
        train, evaluation = state.train.get(step), state.evals.get(step)
        train_loss = train.loss if train else None
        eval_loss = evaluation.eval_loss if evaluation else None
        stamp = max(r.ts for r in (train, evaluation) if r is not None)
        row = {
            "job_id": state.job_id,
            "step": step,
            "epoch": (evaluation or train).epoch,
            "train_loss": train_loss,
            "eval_loss": eval_loss,
            "learning_rate": train.learning_rate if train else None,
            "grad_norm": train.grad_norm if train else None,
            "perplexity": perplexity(eval_loss),
            "train_perplexity": perplexity(train_loss),
            "timestamp": iso_time(stamp),
        }
        rows.append({name: finite_or_none(value) for name, value in row.items()})
    return rows


def perplexity(loss: float | None) -> float | None:
    """Return ``exp(loss)``, or None when it is undefined or overflows."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def loss_trend(decision: Decision) -> str | None:
    """Classify the last two evaluations: improving, degrading, stable or diverged."""
    if decision.diverged:
        return "diverged"
    losses = [e.eval_loss for e in decision.evals[-2:]]
    if len(losses) < 2:
        return None
    previous, latest = losses
    if latest < previous * (1 - TREND_TOLERANCE):
        return "improving"
    if latest > previous * (1 + TREND_TOLERANCE):
        return "degrading"
    return "stable"


def iso_time(ts: float | None) -> str | None:
    """Return unix seconds as an ISO 8601 UTC timestamp."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def finite_or_none(value: Any) -> Any:
    """Replace NaN and infinities by None; leave everything else alone."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_safe(value: Any) -> Any:
    """Return ``value`` with non-finite floats spelled as the wire strings (for jsonb)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _status(state: JobState) -> str | None:
    if state.end is not None:
        return state.end.status
    # "pending" for a state with no facts keeps the platform's NOT NULL status satisfied.
    return "running" if state.last_ts is not None else "pending"


def _progress(state: JobState) -> float | None:
    if state.end is not None and state.end.status == "completed":
        return 100.0
    begin = state.latest_begin
    if begin is None or not begin.max_steps:
        return None
    return min(100.0, 100.0 * state.max_step / begin.max_steps)


def _current_epoch(state: JobState) -> float | None:
    records = [*state.train.items(), *state.evals.items()]
    epochs = [(step, r.epoch) for step, r in records if r.epoch is not None]
    return max(epochs)[1] if epochs else None


def _latest(records: dict[int, Any], keep: Any) -> Any:
    steps = [step for step, record in records.items() if keep(record)]
    return records[max(steps)] if steps else None


def _latest_value(records: dict[int, Any], name: str) -> float | None:
    record = _latest(records, lambda r: getattr(r, name) is not None)
    return getattr(record, name) if record else None


def _checkpoint_path(state: JobState, checkpoint: str | None) -> str | None:
    if checkpoint is None:
        return None
    begin = state.latest_begin
    if begin and begin.output_dir:
        return f"{begin.output_dir.rstrip('/')}/{checkpoint}"
    return checkpoint
