"""The row model: one list of columns, one mapping from state to row, for every writer.

``local_training_jobs`` gets one row per job (DESIGN section 5); ``local_training_metrics``
gets one row per (job_id, step), train and eval values merged.

The sink maps facts: every score, pick and breakdown comes from the summary the scorer
committed with the state; nothing here scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from producer.events import spell_non_finite
from producer.redaction import db_safe, redact
from producer.wire import CHECKPOINT_PREFIX
from scorer_worker.state import RUNNING_STATUS, JobState
from scorer_worker.summary import Pick, Summary


@dataclass(frozen=True)
class Column:
    """A column the sink writes, with its SQL type (PostgreSQL spelling).

    ``default``, when set, makes the column ``NOT NULL DEFAULT <default>`` (a count every
    row has, rows the sink never wrote included).
    """

    name: str
    sql_type: str
    default: str | None = None


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
    # Events the job's producers dropped and reported (events_lost): the row was computed
    # without them. 003_events_lost.sql.
    Column("events_lost", "integer", default="0"),
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


def job_row(
    state: JobState, summary: Summary | None = None, secrets: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Map a job's state to the ``local_training_jobs`` columns (all of JOB_COLUMN_NAMES).

    The history-wide values come from ``summary`` (by default the state's own, committed by
    the scorer), so the head of the state suffices. Non-finite numbers become None (JSON and
    PostgREST cannot carry them); ``loss_trend`` says ``diverged`` instead. Text from the
    producer (the error, the output folder) has the job's ``secrets`` and any URL password
    masked, and NUL removed (PostgreSQL refuses it).

    Raises:
        ValueError: when there is no summary (the sink does not summarize a state itself).
    """
    s = summary or state.summary
    if s is None:
        raise ValueError(f"state of {state.job_id} has no summary: the scorer commits one")
    begin = state.latest_begin
    best, by_loss, last = s.best, s.best_by_eval_loss, s.last_eval
    loss = _latest_train(s, "loss")
    last_loss = last.eval_loss if last else None
    row = {
        "status": _status(state, s),
        "current_step": s.max_step,
        "current_epoch": s.epoch_at[1] if s.epoch_at else None,
        "total_steps": begin.max_steps if begin else None,
        "total_epochs": begin.num_train_epochs if begin else None,
        "progress": _progress(state, s),
        "loss": loss,
        "eval_loss": last_loss,
        "learning_rate": _latest_train(s, "learning_rate"),
        "grad_norm": _latest_train(s, "grad_norm"),
        "perplexity": perplexity(last_loss),
        "train_perplexity": perplexity(loss),
        # Every best_* column describes the one multi-metric pick (what the dashboard shows as
        # "the best model"); the eval-loss-only pick is kept in the breakdown for comparison.
        "best_eval_loss": best.eval_loss if best else None,
        "best_epoch": best.epoch if best else None,
        "best_step": best.step if best else None,
        "best_checkpoint_score": best.score if best else None,
        "best_checkpoint_step": best.step if best else None,
        "best_checkpoint_epoch": round(best.epoch) if best and best.epoch is not None else None,
        "best_checkpoint_path": _checkpoint_path(state, s, best),
        "epochs_without_improvement": last.epochs_without_improvement if last else None,
        "loss_trend": loss_trend(s),
        "error_message": _error_message(state, secrets),
        "started_at": iso_time(s.first_ts),
        "completed_at": iso_time(state.end.ts) if state.end else None,
        "updated_at": iso_time(s.last_ts),
        "scoring_version": state.version,
        "best_score_breakdown": json_safe(_breakdown(best, by_loss)),
        "events_lost": state.events_lost_total,  # the scorer's sum of the producers' reports
    }
    return {name: _column_safe(value) for name, value in row.items()}


def _column_safe(value: Any) -> Any:
    return db_safe(value) if isinstance(value, str) else finite_or_none(value)


def metric_rows(state: JobState, since_version: int = 0) -> list[dict[str, Any]]:
    """Return ``local_training_metrics`` rows for the steps changed after ``since_version``."""
    train, evals = state.train, state.evals
    steps = {s for s, r in train.items() if r.changed > since_version}
    steps.update(s for s, r in evals.items() if r.changed > since_version)
    rows, finite, job_id = [], finite_or_none, state.job_id
    # Built directly, without per-row lists or helpers: this runs once per step of every job,
    # and was a fifth of the sink's time.
    for step in sorted(steps):
        log, evaluation = train.get(step), evals.get(step)
        if evaluation is None:  # a train log alone: most steps
            epoch, eval_loss, ts = log.epoch, None, log.ts
        else:
            epoch, eval_loss = evaluation.epoch, evaluation.eval_loss
            ts = max(evaluation.ts, log.ts) if log else evaluation.ts
        train_loss = log.loss if log else None
        rows.append(
            {
                "job_id": job_id, "step": step, "epoch": epoch,
                "train_loss": finite(train_loss), "eval_loss": finite(eval_loss),
                "learning_rate": finite(log.learning_rate) if log else None,
                "grad_norm": finite(log.grad_norm) if log else None,
                "perplexity": perplexity(eval_loss), "train_perplexity": perplexity(train_loss),
                "timestamp": iso_time(ts),
            }
        )  # fmt: skip
    return rows


def perplexity(loss: float | None) -> float | None:
    """Return ``exp(loss)``, or None when it is undefined or overflows."""
    if loss is None or not math.isfinite(loss):
        return None
    try:
        return math.exp(loss)
    except OverflowError:
        return None


def loss_trend(summary: Summary) -> str | None:
    """Classify the last two evaluations: improving, degrading, stable or diverged.

    None before two evaluations, or when the earlier one has no usable loss.
    """
    last = summary.last_eval
    if last is None:
        return None
    if summary.diverged:
        return "diverged"
    previous, latest = summary.usable_previous_eval_loss, last.eval_loss
    if previous is None:
        return None
    if latest < previous * (1 - TREND_TOLERANCE):
        return "improving"
    if latest > previous * (1 + TREND_TOLERANCE):
        return "degrading"
    return "stable"


def iso_time(ts: float | None) -> str | None:
    """Return unix seconds as an ISO 8601 UTC timestamp.

    The same text as ``datetime.fromtimestamp(ts, tz=UTC).isoformat()``, built from a cached
    per-second prefix: this runs once per metric row, and the datetime costs most of it.
    """
    if ts is None:
        return None
    if not 0.0 <= ts < _MAX_CACHED_TS:  # negative, non-finite or huge: the plain way
        return datetime.fromtimestamp(ts, tz=UTC).isoformat()
    seconds, micros = _split_micros(ts)
    prefix = _second_prefix(seconds)
    return f"{prefix}.{micros:06d}+00:00" if micros else f"{prefix}+00:00"


_MAX_CACHED_TS = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second a datetime holds


def _split_micros(ts: float) -> tuple[int, int]:
    # Rounded the way datetime.fromtimestamp rounds (half to even, carried into the second).
    frac, whole = math.modf(ts)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        return int(whole) + 1, micros - 1_000_000
    return int(whole), micros


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    # A job's rows fall in few distinct seconds: the cache holds the date and time of each.
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat()[:19]


def finite_or_none(value: Any) -> Any:
    """Replace NaN and infinities by None; leave everything else alone."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_safe(value: Any) -> Any:
    """Return ``value`` with non-finite floats spelled as the wire strings (for jsonb)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float):
        return spell_non_finite(value)
    return value


def _status(state: JobState, summary: Summary) -> str | None:
    if state.end is not None or state.cut_off is not None:
        return state.status
    # "pending" for a state with no facts keeps the platform's NOT NULL status satisfied.
    return RUNNING_STATUS if summary.last_ts is not None else "pending"


def _error_message(state: JobState, secrets: tuple[str, ...]) -> str | None:
    if state.cut_off is not None:
        return f"cut off by the pipeline: {state.cut_off}"
    if state.end is not None and state.end.error:
        return redact(state.end.error, secrets)
    if state.stalled_since is not None:
        return f"stalled: no event since {iso_time(state.stalled_since)}"
    return None


def _progress(state: JobState, summary: Summary) -> float | None:
    if state.end is not None and state.end.status == "completed":
        return 100.0
    begin = state.latest_begin
    if begin is None or not begin.max_steps:
        return None
    return min(100.0, 100.0 * summary.max_step / begin.max_steps)


def _latest_train(summary: Summary, name: str) -> float | None:
    latest = summary.latest_train.get(name)
    return latest[1] if latest else None


def _breakdown(best: Pick | None, by_loss: Pick | None) -> dict | None:
    if best is None and by_loss is None:
        return None
    if best is not None and best.breakdown is None:
        # Stored by a version whose picks had no breakdown: null until the scorer rebuilds
        # the summary (its next change of the job), rather than a score made up here.
        return None
    breakdown: dict[str, Any] = dict(best.breakdown) if best is not None else {}
    breakdown["eval_loss_pick"] = eval_loss_pick(by_loss)
    return breakdown


def eval_loss_pick(pick: Pick | None) -> dict[str, Any] | None:
    """Return the eval-loss-only pick as the row's breakdown shows it (None when none)."""
    if pick is None:
        return None
    return {
        "step": pick.step,
        "epoch": pick.epoch,
        "eval_loss": pick.eval_loss,
        "score": pick.score,
    }


def _checkpoint_path(state: JobState, summary: Summary, best: Pick | None) -> str | None:
    if best is None or summary.retained is None:
        return None  # no checkpoint saved yet: the best evaluation has no folder
    checkpoint = f"{CHECKPOINT_PREFIX}{best.step}"
    begin = state.latest_begin
    if begin and begin.output_dir:
        return f"{begin.output_dir.rstrip('/')}/{checkpoint}"
    return checkpoint
