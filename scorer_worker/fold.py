"""Folding a batch of decoded events into a job's state: the one fold both drains run."""

from __future__ import annotations

from typing import Any

from producer.wire import EVENT_FIELD

from .deadletter import DeadLetter, make_dead_letter
from .errors import InvalidEvent
from .models import WireEvent, decode_entry
from .poison import Poisoned
from .scoring import get_profile
from .streams import OversizeEntry


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


def decode_batch(job_id: str, entries: list[tuple[str, Any]]) -> list[tuple[str, Any, Any]]:
    """Decode stream entries: ``(entry id, fields, WireEvent or InvalidEvent)`` each."""
    decoded = []
    for entry_id, fields in entries:
        if isinstance(fields, OversizeEntry):
            event: Any = InvalidEvent(fields.reason, fields.head)
        else:
            try:
                event = decode_entry(fields, job_id)
            except InvalidEvent as exc:
                event = exc
        decoded.append((entry_id, fields, event))
    return decoded


class Fold:
    """Folds a batch's decoded entries into ``txn.state``, collecting dead letters.

    Args:
        dead_payload_max_bytes: how much of a dead letter's payload is kept.
        secrets: what dead letters redact (the job's token and pod password).
    """

    def __init__(self, txn: Any, dead_payload_max_bytes: int, secrets: tuple[str, ...]) -> None:
        self.txn = txn
        self.cap, self.secrets = dead_payload_max_bytes, secrets
        self.dead: list[DeadLetter] = []
        self.changed = False

    def run(self, decoded: list[tuple[str, Any, Any]], given_up: dict[str, str]) -> None:
        """Apply the valid entries in order; dead-letter the invalid and given-up ones.

        Raises:
            NeedsFullLoad: an event does not extend the run (fold again over every record).
            Poisoned: applying an event raised (counted by the caller, then retried).
        """
        for entry_id, fields, event in decoded:
            if entry_id in given_up:
                oversize = isinstance(fields, OversizeEntry)
                raw = fields.head if oversize else fields.get(EVENT_FIELD.encode())
                self._dead(entry_id, given_up[entry_id], raw)
            elif isinstance(event, InvalidEvent):
                self._dead(entry_id, event.reason, event.raw)
            else:
                self.changed = self._apply(entry_id, event) or self.changed

    def _dead(self, entry_id: str, reason: str, raw: Any) -> None:
        job_id = self.txn.job_id
        self.dead.append(make_dead_letter(job_id, entry_id, reason, raw, self.cap, self.secrets))

    def _apply(self, entry_id: str, event: WireEvent) -> bool:
        try:
            return apply_event(self.txn, event)
        except NeedsFullLoad:
            raise
        except Exception as exc:  # a scoring bug: counted, retried, dead-lettered at last
            raise Poisoned(entry_id, exc) from exc
