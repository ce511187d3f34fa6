"""Draining a job's stream: validate, fold into the state, commit state and cursor together."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from . import keys
from .deadletter import DeadLetter, make_dead_letter
from .errors import InvalidEvent, StateConflict
from .models import decode_entry
from .settings import Settings
from .store import StateTransaction

log = logging.getLogger(__name__)
MAX_CONFLICT_RETRIES = 20


@dataclass
class DrainResult:
    """What one drain did."""

    job_id: str
    events: int = 0
    dead: int = 0
    commits: int = 0
    version: int = 0
    caught_up: bool = False


def drain_job(redis: Any, job_id: str, settings: Settings) -> DrainResult:
    """Fold every event after the job's cursor into its state, batch by batch.

    Stops when the stream is caught up or after ``settings.drain_budget_s`` (the pump then
    enqueues another drain), so one busy job cannot hold a worker forever.
    """
    result = DrainResult(job_id)
    secrets = _secrets(redis, job_id)
    deadline = time.monotonic() + settings.drain_budget_s
    conflicts = 0
    while time.monotonic() < deadline:
        try:
            batch_size = _drain_batch(redis, job_id, settings, result, secrets)
        except StateConflict:
            conflicts += 1  # a concurrent drain of the same job committed first: re-read
            if conflicts > MAX_CONFLICT_RETRIES:
                raise
            continue
        if batch_size < settings.drain_batch_events:
            result.caught_up = True
            break
    return result


def _drain_batch(
    redis: Any, job_id: str, settings: Settings, result: DrainResult, secrets: tuple[str, ...]
) -> int:
    with StateTransaction(redis, job_id, settings.profile) as txn:
        entries = txn.read_events(settings.drain_batch_events)
        if not entries:
            result.version = txn.state.version
            return 0
        dead: list[DeadLetter] = []
        changed = False
        for entry_id, fields in entries:
            reason, raw = _fold(txn.state, job_id, fields)
            if reason is None:
                changed = True if raw else changed
            else:
                cap = settings.dead_payload_max_bytes
                dead.append(make_dead_letter(job_id, entry_id, reason, raw, cap, secrets))
        state = txn.state
        state.cursor = entries[-1][0]
        state.dead_letters += len(dead)
        if changed or dead:
            state.version += 1
        txn.commit(dead)
    result.events += len(entries)
    result.dead += len(dead)
    result.commits += 1
    result.version = state.version
    return len(entries)


def _secrets(redis: Any, job_id: str) -> tuple[str, ...]:
    values = redis.hmget(keys.meta(job_id), "token", "pod_password")
    return tuple(v.decode() if isinstance(v, bytes) else v for v in values if v)


def _fold(state: Any, job_id: str, fields: dict) -> tuple[str | None, Any]:
    """Apply one entry. Returns (None, changed) or (reason, raw payload) for a dead letter."""
    try:
        event = decode_entry(fields, job_id)
    except InvalidEvent as exc:
        return exc.reason, exc.raw
    try:
        return None, state.apply(event)
    except Exception as exc:  # a scoring bug must not wedge the job: dead-letter the event
        log.exception("event of job %s could not be applied", job_id)
        return f"scoring raised {type(exc).__name__}: {exc}", event.model_dump_json()
