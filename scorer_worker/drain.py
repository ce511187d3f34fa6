"""Draining a job's stream: validate, fold into the state, commit state and cursor together."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import WatchError

from producer.wire import as_text

from . import keys
from .deadletter import DeadLetter, make_dead_letter
from .errors import InvalidEvent, PoisonEvent, StateConflict
from .limits import CUT_OFF_FIELD, STALLED_FIELD
from .models import WireEvent, decode_entry
from .registry import job_secrets
from .scoring import get_profile
from .settings import Settings
from .store import OversizeEntry, StateTransaction

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


def drain_job(
    redis: Any, job_id: str, settings: Settings, deadline: float | None = None
) -> DrainResult:
    """Fold every event after the job's cursor into its state, batch by batch.

    Stops when the stream is caught up or after ``settings.drain_budget_s`` (the pump then
    enqueues another drain), so one busy job cannot hold a worker forever.
    """
    result = DrainResult(job_id)
    secrets = job_secrets(redis, job_id)
    deadline = deadline or time.monotonic() + settings.drain_budget_s
    conflicts = 0
    while True:
        try:
            more = _drain_batch(redis, job_id, settings, result, secrets)
        except _PoisonGaveUp:
            continue  # re-read the batch: the poison event is now dead-lettered unapplied
        except (StateConflict, WatchError):
            # A concurrent drain of the same job committed first, or the connection dropped
            # while the state was watched (redis-py then raises WatchError): re-read.
            conflicts += 1
            if conflicts > MAX_CONFLICT_RETRIES:
                raise
            continue
        if not more:
            result.caught_up = True
            break
        if time.monotonic() >= deadline:
            break  # at least one batch per call, so a late job in a chunk still progresses
    return result


def _drain_batch(
    redis: Any, job_id: str, settings: Settings, result: DrainResult, secrets: tuple[str, ...]
) -> bool:
    with StateTransaction(redis, job_id, settings.profile) as txn:
        if _trusted_facts(redis, txn, job_id):
            result.version, result.commits = txn.state.version, result.commits + 1
            return False  # cut off (the backlog is dropped unread), or a stall to report
        entries = txn.read_events(settings.drain_batch_events, settings.drain_read_max_bytes)
        if not entries:
            result.version = txn.state.version
            return False
        given_up = _poison_given_up(redis, job_id, settings.poison_max_attempts)
        decoded = [(entry_id, fields, _decode(job_id, fields)) for entry_id, fields in entries]
        txn.load_for(e for entry_id, _, e in decoded if isinstance(e, WireEvent))
        fold = _Fold(txn, redis, job_id, settings, secrets)
        try:
            fold.run(decoded, given_up)
        except NeedsFullLoad:
            # An event did not extend the run (a resume, a late or replaced record): fold the
            # batch again over the whole state; the commit rebuilds the summary.
            txn.load_all()
            fold = _Fold(txn, redis, job_id, settings, secrets)
            fold.run(decoded, given_up)
        dead, changed = fold.dead, fold.changed
        state = txn.state
        state.cursor = entries[-1][0]
        state.dead_letters += len(dead)
        resumed = state.stalled_since is not None  # the job talks again: the report clears
        state.stalled_since = None
        if changed or dead or resumed:
            state.version += 1
        # The job talked: a stall the pump noted but no drain folded yet is void too.
        clear = [_poison_field(e) for e in given_up] + [STALLED_FIELD]
        txn.commit(
            dead,
            clear_fields=clear,
            dead_max_per_job=settings.dead_letters_per_job,
            drained_at=time.time(),
        )
    result.events += len(entries)
    result.dead += len(dead)
    result.commits += 1
    result.version = state.version
    return len(entries) >= txn.last_read_limit  # a full batch: there may be more


def _trusted_facts(redis: Any, txn: StateTransaction, job_id: str) -> bool:
    """Fold what trusted processes decided (in the meta hash) into the state; commit if so.

    Returns:
        True when this committed (or nothing more is to be drained: the job is cut off).
    """
    cut_off, stalled = (_str(v) if v else None for v in redis.hmget(keys.meta(job_id),
                        CUT_OFF_FIELD, STALLED_FIELD))  # fmt: skip
    state = txn.state
    if cut_off is not None:
        if state.cut_off is None:
            state.cut_off = cut_off
            state.version += 1
        txn.commit([], drop_stream=True)  # the backlog goes unread, in the background
        return True
    quiet = stalled is not None and state.stalled_since is None and state.end is None
    if quiet and redis.xlen(keys.events(job_id)) == 0:  # events waiting: they clear it anyway
        state.stalled_since = float(stalled)
        state.version += 1
        txn.commit([])
        return True
    return False


def _decode(job_id: str, fields: Any) -> WireEvent | InvalidEvent:
    if isinstance(fields, OversizeEntry):
        return InvalidEvent(fields.reason, fields.head)
    try:
        return decode_entry(fields, job_id)
    except InvalidEvent as exc:
        return exc


class _Fold:
    """Folds a batch's entries into the transaction's state, collecting dead letters."""

    def __init__(
        self,
        txn: StateTransaction,
        redis: Any,
        job_id: str,
        settings: Settings,
        secrets: tuple[str, ...],
    ) -> None:
        self.txn, self.redis, self.job_id, self.settings = txn, redis, job_id, settings
        self.secrets = secrets
        self.dead: list[DeadLetter] = []
        self.changed = False

    def run(self, decoded: list[tuple[str, dict, Any]], given_up: dict[str, str]) -> None:
        """Apply the valid entries in order; dead-letter the invalid and given-up ones."""
        for entry_id, fields, event in decoded:
            if entry_id in given_up:
                raw = fields.head if isinstance(fields, OversizeEntry) else fields.get(b"event")
                self._dead(entry_id, given_up[entry_id], raw)
            elif isinstance(event, InvalidEvent):
                self._dead(entry_id, event.reason, event.raw)
            else:
                self.changed = self._apply(entry_id, event) or self.changed

    def _dead(self, entry_id: str, reason: str, raw: Any) -> None:
        cap = self.settings.dead_payload_max_bytes
        self.dead.append(make_dead_letter(self.job_id, entry_id, reason, raw, cap, self.secrets))

    def _apply(self, entry_id: str, event: WireEvent) -> bool:
        """Apply one valid event and update the summary; return whether the state changed.

        Raises:
            NeedsFullLoad: the summary cannot take the event incrementally.
            PoisonEvent: applying it raised; the batch is abandoned uncommitted and retried,
                up to ``settings.poison_max_attempts`` times.
        """
        try:
            return apply_event(self.txn, event)
        except NeedsFullLoad:
            raise
        except Exception as exc:  # a scoring bug: retry a few times, then dead-letter the event
            if record_poison(self.redis, self.job_id, entry_id, exc, self.settings):
                raise _PoisonGaveUp from None
            raise PoisonEvent(f"event {entry_id} of job {self.job_id}: {exc!r}") from exc


def record_poison(
    redis: Any, job_id: str, entry_id: str, exc: Exception, settings: Settings
) -> bool:
    """Count one failed attempt at applying an event; return True once it is to be given up.

    The next drain of the job dead-letters an event given up on, unapplied.
    """
    reason = f"scoring raised {type(exc).__name__}: {exc}"
    attempts = _count_poison(redis, job_id, entry_id, reason)
    log.error("event %s of job %s failed (attempt %d)", entry_id, job_id, attempts, exc_info=exc)
    return attempts >= settings.poison_max_attempts


class NeedsFullLoad(Exception):
    """The batch must be folded again over the fully loaded state."""


def apply_event(txn: Any, event: WireEvent) -> bool:
    """Apply one valid event to ``txn.state`` and keep its summary; return whether it changed.

    ``txn`` has ``state``, ``full`` (every record is loaded: the commit rebuilds the summary)
    and ``load_evals(steps)``.

    Raises:
        NeedsFullLoad: the event changes the state but not by extending the run.
    """
    state = txn.state
    if not (txn.full or state.summary.accepts(event, state)):
        if state.would_change(event):
            raise NeedsFullLoad
        return False  # a duplicate or superseded event: nothing to rebuild
    changed = state.apply(event)
    if changed and not txn.full:
        state.summary.observe(event, state, get_profile(state.profile), txn.load_evals)
    return changed


class _PoisonGaveUp(Exception):
    """Internal: the poison event exhausted its attempts; re-run the batch without it."""


def _poison_field(entry_id: str) -> str:
    return f"poison:{entry_id}"


def _count_poison(redis: Any, job_id: str, entry_id: str, reason: str) -> int:
    field = _poison_field(entry_id)
    attempts = int(redis.hget(keys.meta(job_id), field + ":n") or 0) + 1
    redis.hset(keys.meta(job_id), mapping={field + ":n": attempts, field: reason[:500]})
    return attempts


def _poison_given_up(redis: Any, job_id: str, max_attempts: int) -> dict[str, str]:
    """Entries whose application failed ``max_attempts`` times: id -> reason."""
    meta = redis.hgetall(keys.meta(job_id))
    fields = {_str(k): _str(v) for k, v in meta.items() if _str(k).startswith("poison:")}
    given_up = {}
    for name, value in fields.items():
        if name.endswith(":n") and int(value) >= max_attempts:
            field = name[: -len(":n")]
            reason = f"{fields.get(field, 'scoring raised')} (gave up after {value} attempts)"
            given_up[field[len("poison:") :]] = reason
    return given_up


def _str(value: Any) -> str:
    return str(as_text(value))
