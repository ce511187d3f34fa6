"""Building and encoding wire events (DESIGN section 3). Standard library only."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from typing import Any

from .wire import (
    EVENTS_LOST,
    MAX_EVENT_BYTES,
    MAX_LIST_ITEMS,
    WIRE_KINDS,
    WIRE_VERSION,
    is_valid_job_id,
)

Event = dict[str, Any]


def spell_non_finite(value: float) -> str | float:
    """Return the wire spelling of a non-finite float ("nan", "inf", "-inf"), else ``value``."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def wire_number(value: Any) -> float | int | str | None:
    """Return ``value`` as a wire number: NaN and infinities become the strings nan/inf/-inf.

    Values that are not numbers (tensors aside, which are converted with ``float``) become None.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return spell_non_finite(number)


def build_event(
    kind: str,
    job_id: str,
    step: int,
    epoch: float | None = None,
    metrics: Mapping[str, Any] | None = None,
    info: Mapping[str, Any] | None = None,
    ts: float | None = None,
) -> Event:
    """Return a version-1 wire event as a plain dict.

    Metric values are converted with :func:`wire_number`; non-numeric metrics are dropped.

    Raises:
        ValueError: on an unknown kind, an invalid job id or a negative step.
    """
    if kind not in WIRE_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if not is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}")
    if int(step) < 0:
        raise ValueError(f"negative step {step}")
    clean_metrics = {}
    for name, value in (metrics or {}).items():
        number = wire_number(value)
        if number is not None or value is None:
            clean_metrics[str(name)] = number
    return {
        "v": WIRE_VERSION,
        "job_id": job_id,
        "kind": kind,
        "step": int(step),
        "epoch": None if epoch is None else float(epoch),
        "ts": time.time() if ts is None else float(ts),
        "metrics": clean_metrics,
        "info": dict(info or {}),
    }


def build_loss_report(job_id: str, instance: str, lost: int, ts: float | None = None) -> Event:
    """Return a publisher's ``events_lost`` report (DESIGN section 3, ``producer.wire``).

    Args:
        job_id: the job the publisher publishes for.
        instance: the publisher's id (random hex, made once per publisher).
        lost: how many events this publisher dropped since it was made (cumulative, so that
            a report delivered twice, or an older one delivered late, changes nothing).
        ts: producer time; now by default.

    Raises:
        ValueError: on an invalid job id.
    """
    info = {"instance": instance, "lost": int(lost)}
    return build_event(EVENTS_LOST, job_id, 0, info=info, ts=ts)


def encode_event(event: Event) -> str:
    """Encode an event as compact JSON, at most ``MAX_EVENT_BYTES`` UTF-8 bytes.

    An oversize event keeps its identity, its numbers and its small ``info`` fields; large
    ``info`` values are cut (a list keeps its newest items, e.g. the latest ``retained``
    checkpoints) and ``info.truncated`` is set, so the event still counts. A list longer than
    ``MAX_LIST_ITEMS`` is cut to its newest items the same way.

    Raises:
        ValueError: if the event is oversize even with its ``info`` cut.
    """
    long_lists = [
        k for k, v in event["info"].items() if isinstance(v, list) and len(v) > MAX_LIST_ITEMS
    ]
    if long_lists:  # the scorer refuses longer ones: keep the newest items
        cut = {key: event["info"][key][-MAX_LIST_ITEMS:] for key in long_lists}
        event = {**event, "info": {**event["info"], **cut, "truncated": True}}
    text = _dumps(event)
    if len(text.encode("utf-8")) <= MAX_EVENT_BYTES:
        return text
    info = {key: _shrink(value) for key, value in event["info"].items()}
    info = {key: value for key, value in info.items() if value is not _DROP}
    text = _dumps({**event, "info": {**info, "truncated": True}})
    if len(text.encode("utf-8")) > MAX_EVENT_BYTES:
        raise ValueError("event exceeds 64 KiB even with its info cut")
    return text


_DROP = object()
_INFO_VALUE_BYTES = 1024
_INFO_LIST_BYTES = 32 * 1024


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _shrink(value: Any) -> Any:
    if len(_dumps(value)) <= _INFO_VALUE_BYTES:
        return value
    if isinstance(value, list):
        kept: list[Any] = []
        for item in reversed(value):
            if len(_dumps([item, *kept])) > _INFO_LIST_BYTES:
                break
            kept.insert(0, item)
        return kept
    if isinstance(value, str):
        return value[:_INFO_VALUE_BYTES]
    return _DROP
