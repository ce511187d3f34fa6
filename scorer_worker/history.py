"""A finished run's output folder as events: for replay, back-fill and the offline listing.

The newest ``checkpoint-*/trainer_state.json`` (or a newer ``trainer_state.json`` at the top
of the folder, written by ``Trainer.save_state``) holds the run's ``log_history``; the
checkpoint folders present are what rotation retained.

A trainer state that is not what ``Trainer`` writes (not JSON, not an object, a log entry that
is not an object, a step that is not a count) is refused with :class:`RunFolderError`, one
line naming the file and the entry, before any event is built or sent.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from producer.events import Event, build_event, encode_event
from producer.wire import (
    CHECKPOINT_SAVED,
    EVAL,
    MAX_EVENT_BYTES,
    MAX_STEP,
    TRAIN_BEGIN,
    TRAIN_END,
    TRAIN_LOG,
    checkpoint_step,
)

from .errors import PipelineError
from .models import WireEvent

STATE_FILE = "trainer_state.json"


class RunFolderError(PipelineError):
    """A run folder's trainer state is unreadable or not a trainer state; the message says
    which file and which entry, in one line."""


def checkpoint_dirs(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Return the ``checkpoint-N`` folders of ``output_dir``, by step."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p.name) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p.name) or 0)


def newest_trainer_state(output_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the most advanced ``trainer_state.json`` of a run.

    Its ``global_step``, ``max_steps``, ``epoch``, ``num_train_epochs`` and ``log_history``
    are checked (missing ones read as 0, None or empty).

    Raises:
        FileNotFoundError: when the folder holds no trainer state at all.
        RunFolderError: when a trainer state is unreadable or malformed.
    """
    candidates = [d / STATE_FILE for d in checkpoint_dirs(output_dir)]
    candidates.append(Path(output_dir) / STATE_FILE)
    states = [read_trainer_state(p) for p in candidates if p.is_file()]
    if not states:
        raise FileNotFoundError(f"no {STATE_FILE} under {output_dir}")
    return max(states, key=lambda s: (s["global_step"], len(s["log_history"])))


def read_trainer_state(path: Path) -> dict[str, Any]:
    """Read one ``trainer_state.json`` and check the fields a replay uses.

    Raises:
        RunFolderError: the file is unreadable, not JSON, or not shaped as ``Trainer``
            writes it.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RunFolderError(f"{path} is not UTF-8 text, so not a {STATE_FILE}") from None
    except OSError as exc:
        raise RunFolderError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        # Trainer writes NaN and Infinity as bare literals, which json accepts.
        state = json.loads(text)
    except ValueError as exc:
        raise RunFolderError(f"{path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise RunFolderError(f"{path} is not a {STATE_FILE}: nested too deeply") from None
    if not isinstance(state, dict):
        raise RunFolderError(f"{path} holds {_what(state)}, not a {STATE_FILE} object")
    history = state.get("log_history")
    history = [] if history is None else history
    if not isinstance(history, list):
        raise RunFolderError(f"{path}: log_history is {_what(history)}, not a list")
    for index, entry in enumerate(history):
        where = f"{path}: log_history[{index}]"
        if not isinstance(entry, dict):
            raise RunFolderError(f"{where} is {_what(entry)}, not an object")
        _count(entry.get("step"), f"{where}.step")
        _epoch(entry.get("epoch"), f"{where}.epoch")
    return {
        **state,
        "path": str(path),
        "global_step": _count(state.get("global_step"), f"{path}: global_step"),
        # None when absent, as Trainer never writes it so: the row then shows no total.
        "max_steps": _count(state["max_steps"], f"{path}: max_steps")
        if state.get("max_steps") is not None
        else None,
        "epoch": _epoch(state.get("epoch"), f"{path}: epoch"),
        "num_train_epochs": _epoch(state.get("num_train_epochs"), f"{path}: num_train_epochs"),
        "log_history": history,
    }


def _count(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 10.0 is a step; 10.5 is not
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEP:
        raise RunFolderError(f"{where} is {_what(value)}, not a count from 0 to {MAX_STEP}")
    return value


def _epoch(value: Any, where: str) -> float | None:
    if value is None:
        return None
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not math.isfinite(number) or not 0 <= number <= MAX_STEP:
        raise RunFolderError(f"{where} is {_what(value)}, not a number from 0 to {MAX_STEP}")
    return float(number)


def _what(value: Any) -> str:
    # Short (the value may be megabytes of text) and repr'd (it may hold terminal escapes).
    return "null" if value is None else f"{reprlib.repr(value)} ({type(value).__name__})"


def run_events(job_id: str, output_dir: str | os.PathLike[str], ts: float) -> list[Event]:
    """Return the events a live callback would have published for a finished run.

    All events carry the same producer time ``ts``, and ``train_begin`` says the run
    started from step 0, so a replay supersedes whatever an earlier (live or replayed)
    attempt recorded and replaying twice changes nothing. Every event is checked as the
    scorer will check it, so a replay sends nothing unless all of it would be accepted.

    Raises:
        FileNotFoundError: when the folder holds no trainer state.
        RunFolderError: when the trainer state is malformed or an entry makes an event the
            scorer would refuse (the message names the file and the entry).
    """
    state = newest_trainer_state(output_dir)
    where = state["path"]
    folders = [d.name for d in checkpoint_dirs(output_dir)]
    events = [_checked(_begin(job_id, state, Path(output_dir), ts), where)]
    summary: dict[str, Any] = {}
    for index, entry in enumerate(state["log_history"]):
        if "train_runtime" in entry:
            summary = entry
        elif event := _log_event(job_id, entry, ts):
            events.append(_checked(event, f"{where}: log_history[{index}]"))
    for name in folders:
        info = {"checkpoint": name, "retained": folders}
        step = checkpoint_step(name) or 0
        saved = build_event(CHECKPOINT_SAVED, job_id, step, None, None, info, ts)
        events.append(_checked(saved, f"{where}: folder {name}"))
    if summary or state["global_step"] >= (state["max_steps"] or 0) > 0:
        metrics = {k: v for k, v in summary.items() if k in ("train_runtime", "train_loss")}
        end_info = {"status": "completed"}
        end = build_event(
            TRAIN_END, job_id, state["global_step"], state["epoch"], metrics, end_info, ts
        )
        events.append(_checked(end, f"{where}: the run's end"))
    return events


def _checked(event: Event, where: str) -> Event:
    # The scorer's own model: what passes here is what the drain will accept.
    try:
        WireEvent.model_validate(event)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "event"
        raise RunFolderError(f"{where}: {field}: {first['msg']}") from None
    if _may_exceed_cap(event):
        try:
            encode_event(event)
        except ValueError as exc:  # too large even with its info cut
            raise RunFolderError(f"{where}: {exc}") from None
    return event


def _may_exceed_cap(event: Event) -> bool:
    # Encoding every log entry to measure it would double a long replay's time: a log event
    # (no info) has a bound on its size: a key escapes to at most 6 bytes a character, a
    # float takes at most 24 (an int, its digits), and the fixed fields fit in 200.
    if event["info"]:
        return True
    bound = 200 + sum(
        6 * len(name) + 8 + (len(repr(value)) if isinstance(value, int) else 24)
        for name, value in event["metrics"].items()
    )
    return bound > MAX_EVENT_BYTES


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
    # read_trainer_state checked both: a count (possibly written 10.0) and a number or null.
    step, epoch = int(entry.get("step") or 0), entry.get("epoch")
    metrics = {k: v for k, v in entry.items() if k not in ("step", "epoch")}
    if any(name.startswith("eval_") for name in metrics):
        return build_event(EVAL, job_id, step, epoch, metrics, None, ts)
    if metrics:
        return build_event(TRAIN_LOG, job_id, step, epoch, metrics, None, ts)
    return None
