"""Poison events: an event whose application raises (a scoring bug), counted and given up on.

Both drains take the same path. The failed attempt is counted in the job's meta hash
(:func:`~scorer_worker.keys.poison_fields`) and the batch is left uncommitted, so the task
fails and RQ's retry (or the pump) runs it again. Once an event has failed
``settings.poison_max_attempts`` times, the per-job drain dead-letters it unapplied, in the
commit that clears its counters, and goes on with the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from . import keys
from .keys import JobMeta, poison_fields
from .settings import Settings

log = logging.getLogger(__name__)
REASON_MAX_CHARS = 500


class Poisoned(Exception):
    """Applying the event ``entry_id`` raised ``cause``; the batch is abandoned uncommitted."""

    def __init__(self, entry_id: str, cause: Exception) -> None:
        super().__init__(f"event {entry_id}: scoring raised {cause!r}")
        self.entry_id, self.cause = entry_id, cause


def record_poison(redis: Any, job_id: str, poisoned: Poisoned, settings: Settings) -> bool:
    """Count one failed attempt at applying an event; return True once it is to be given up."""
    exc = poisoned.cause
    reason = f"scoring raised {type(exc).__name__}: {exc}"[:REASON_MAX_CHARS]
    reason_field, count_field = poison_fields(poisoned.entry_id)
    attempts = redis.hincrby(keys.meta(job_id), count_field, 1)
    redis.hset(keys.meta(job_id), reason_field, reason)
    log.error(
        "event %s of job %s failed (attempt %d)", poisoned.entry_id, job_id, attempts, exc_info=exc
    )
    return attempts >= settings.poison_max_attempts


def given_up(meta: JobMeta, max_attempts: int) -> dict[str, str]:
    """The events of a job to dead-letter unapplied: entry id -> reason."""
    return {
        entry_id: f"{poison.reason} (gave up after {poison.attempts} attempts)"
        for entry_id, poison in meta.poison.items()
        if poison.attempts >= max_attempts
    }


def cleared_fields(entry_ids: list[str]) -> list[str]:
    """The meta fields a commit clears once it dead-lettered these events."""
    return [name for entry_id in entry_ids for name in poison_fields(entry_id)]
