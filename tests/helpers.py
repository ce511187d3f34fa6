"""Small builders shared by tests."""

from __future__ import annotations

from producer.events import build_event
from scorer_worker.models import WireEvent
from scorer_worker.state import JobState

JOB = "job-1"


def ev(kind: str, step: int, ts: float | None = None, job: str = JOB, **fields) -> WireEvent:
    """A validated event; metrics and info come from keyword arguments."""
    metrics = fields.pop("metrics", None)
    info = fields.pop("info", None)
    epoch = fields.pop("epoch", step / 10)
    event = build_event(kind, job, step, epoch, metrics, info, ts=float(step) if ts is None else ts)
    return WireEvent.model_validate(event)


def train(step: int, loss: float | None, ts: float | None = None) -> WireEvent:
    return ev("train_log", step, ts, metrics={"loss": loss, "learning_rate": 1e-3})


def evaluation(step: int, eval_loss: float | None, ts: float | None = None) -> WireEvent:
    metrics = {} if eval_loss is None else {"eval_loss": eval_loss}
    return ev("eval", step, ts, metrics=metrics)


def saved(step: int, retained: list[int], ts: float | None = None) -> WireEvent:
    info = {"checkpoint": f"checkpoint-{step}", "retained": [f"checkpoint-{s}" for s in retained]}
    return ev("checkpoint_saved", step, ts, info=info)


def begin(ts: float = 0.0, resumed_from_step: int = 0, max_steps: int = 100) -> WireEvent:
    info = {"max_steps": max_steps, "num_train_epochs": 3, "resumed_from_step": resumed_from_step}
    return ev("train_begin", resumed_from_step, ts, info=info)


def end(step: int, status: str = "completed", ts: float | None = None) -> WireEvent:
    return ev("train_end", step, ts, info={"status": status})


def fold(events: list[WireEvent], job: str = JOB) -> JobState:
    state = JobState(job)
    for event in events:
        state.apply(event)
    return state
