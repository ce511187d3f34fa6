"""A finished run's output folder as events: for replay, back-fill and the offline listing.

The newest ``checkpoint-*/trainer_state.json`` (or a newer ``trainer_state.json`` at the top
of the folder, written by ``Trainer.save_state``) holds the run's ``log_history``; the
checkpoint folders present are what rotation retained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from producer.events import Event, build_event
from producer.wire import CHECKPOINT_SAVED, EVAL, TRAIN_BEGIN, TRAIN_END, TRAIN_LOG, checkpoint_step


def checkpoint_dirs(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Return the ``checkpoint-N`` folders of ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p.name) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p.name) or 0)


def newest_trainer_state(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the most advanced ``trainer_state.json`` of a run.

    Raises:
        FileNotFoundError: when the folder holds no trainer state at all.
    """
    candidates = [d / "trainer_state.json" for d in checkpoint_dirs(output_dir)]
    candidates.append(Path(output_dir) / "trainer_state.json")
    states = [json.loads(p.read_text()) for p in candidates if p.is_file()]
    if not states:
        raise FileNotFoundError(f"no trainer_state.json under {output_dir}")
    return max(states, key=lambda s: (s.get("global_step", 0), len(s.get("log_history", []))))


def run_events(job_id: str, output_dir: str | os.PathLike[str], ts: float) -> list[Event]:
    """Return the events a live callback would have published for a finished run.

    All events carry the same producer time ``ts``, and ``train_begin`` says the run
    started from step 0, so a replay supersedes whatever an earlier (live or replayed)
    attempt recorded and replaying twice changes nothing.
    """
    state = newest_trainer_state(output_dir)
    folders = [d.name for d in checkpoint_dirs(output_dir)]
    events = [_begin(job_id, state, Path(output_dir), ts)]
    summary: dict[str, Any] = {}
    for entry in state.get("log_history", []):
        if "train_runtime" in entry:
            summary = entry
        elif event := _log_event(job_id, entry, ts):
            events.append(event)
    for name in folders:
        info = {"checkpoint": name, "retained": folders}
        step = checkpoint_step(name) or 0
        events.append(build_event(CHECKPOINT_SAVED, job_id, step, None, None, info, ts))
    if summary or state.get("global_step", 0) >= state.get("max_steps", 0) > 0:
        metrics = {k: v for k, v in summary.items() if k in ("train_runtime", "train_loss")}
        step = state.get("global_step", 0)
        end_info = {"status": "completed"}
        events.append(
            build_event(TRAIN_END, job_id, step, state.get("epoch"), metrics, end_info, ts)
        )
    return events


def _begin(job_id: str, state: dict[str, Any], output_dir: Path, ts: float) -> Event:
    info = {
        "max_steps": state.get("max_steps"),
        "num_train_epochs": state.get("num_train_epochs"),
        "resumed_from_step": 0,
        "save_total_limit": None,
        "output_dir": str(output_dir.resolve()),
    }
    return build_event(TRAIN_BEGIN, job_id, 0, 0.0, None, info, ts)


def _log_event(job_id: str, entry: dict[str, Any], ts: float) -> Event | None:
    step, epoch = int(entry.get("step", 0)), entry.get("epoch")
    metrics = {k: v for k, v in entry.items() if k not in ("step", "epoch")}
    if any(name.startswith("eval_") for name in metrics):
        return build_event(EVAL, job_id, step, epoch, metrics, None, ts)
    if metrics:
        return build_event(TRAIN_LOG, job_id, step, epoch, metrics, None, ts)
    return None
