"""Dead letters: events that failed validation or scoring, kept with a reason in ``ckpt:dead``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import keys

DEAD_MAXLEN = 100_000


@dataclass(frozen=True)
class DeadLetter:
    """One rejected event: where it came from, why, and (a capped copy of) its payload."""

    job_id: str
    entry_id: str
    reason: str
    payload: str
    payload_bytes: int
    ts: float

    def fields(self) -> dict[str, str]:
        """Return the stream fields stored in ``ckpt:dead``."""
        return {
            "job_id": self.job_id,
            "entry_id": self.entry_id,
            "reason": self.reason,
            "payload": self.payload,
            "payload_bytes": str(self.payload_bytes),
            "ts": repr(self.ts),
        }

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> DeadLetter:
        """Decode the stream fields of a dead letter."""
        text = {_text(k): _text(v) for k, v in fields.items()}
        return cls(
            text.get("job_id", ""),
            text.get("entry_id", ""),
            text.get("reason", ""),
            text.get("payload", ""),
            int(text.get("payload_bytes", "0") or 0),
            float(text.get("ts", "0") or 0),
        )


REDACTED = b"[REDACTED]"


def make_dead_letter(
    job_id: str,
    entry_id: str,
    reason: str,
    raw: Any,
    max_bytes: int,
    secrets: tuple[str, ...] = (),
) -> DeadLetter:
    """Build a dead letter, keeping at most ``max_bytes`` of the payload (made printable).

    Any of ``secrets`` (the job's token, the pod's password) found in the payload or the
    reason is replaced by ``[REDACTED]``: a producer may echo them by mistake.
    """
    data = raw if isinstance(raw, bytes) else str(raw if raw is not None else "").encode()
    size = len(data)
    for secret in filter(None, secrets):
        data = data.replace(secret.encode(), REDACTED)
        reason = reason.replace(secret, REDACTED.decode())
    payload = data[:max_bytes].decode("utf-8", errors="backslashreplace")
    return DeadLetter(job_id, entry_id, reason[:1000], payload, size, time.time())


def add_dead_letters(pipe: Any, letters: list[DeadLetter]) -> None:
    """Queue XADDs of ``letters`` to ``ckpt:dead`` on a pipeline (inside the state commit)."""
    for letter in letters:
        pipe.xadd(keys.DEAD, letter.fields(), maxlen=DEAD_MAXLEN, approximate=True)


def list_dead_letters(
    redis: Any, count: int = 100, job_id: str | None = None
) -> list[tuple[str, DeadLetter]]:
    """Return the newest dead letters (optionally of one job), newest first."""
    found = []
    for entry_id, fields in redis.xrevrange(keys.DEAD, count=count if job_id is None else 10_000):
        letter = DeadLetter.from_fields(fields)
        if job_id is None or letter.job_id == job_id:
            found.append((_text(entry_id), letter))
        if len(found) >= count:
            break
    return found


def _text(value: Any) -> str:
    return (
        value.decode("utf-8", errors="backslashreplace") if isinstance(value, bytes) else str(value)
    )
