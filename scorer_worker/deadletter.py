"""Dead letters: events that failed validation or scoring, kept with a reason, per job.

Each job's letters live in its own capped stream ``ckpt:{<job>}:dead``, written by the state
commit (one slot, one atomic step). A letter is named ``<job>/<entry id>`` (job ids hold no
``/``), which is what ``ckpt-pipeline dead`` prints and takes.
"""

from __future__ import annotations

import heapq
import re
import time
from dataclasses import dataclass
from typing import Any

from producer.redaction import redact
from producer.wire import as_text, is_valid_job_id

from . import keys
from .errors import PipelineError
from .topology import scan_masters

DEAD_PER_JOB_DEFAULT = 10_000
_ENTRY_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class BadDeadLetterRef(PipelineError, ValueError):
    """A dead letter reference that is not ``<job>/<entry id>``."""


def parse_ref(ref: str) -> tuple[str, str]:
    """Split a dead letter reference ``<job>/<entry id>`` into its job and entry id.

    Raises:
        BadDeadLetterRef: if ``ref`` is not of that form.
    """
    job_id, _, entry_id = ref.partition("/")
    if not is_valid_job_id(job_id) or _ENTRY_ID_RE.fullmatch(entry_id) is None:
        raise BadDeadLetterRef(
            f"{ref!r} is not a dead letter reference: expected <job>/<entry id> "
            "as `ckpt-pipeline dead list` prints it, e.g. job-1/1700000000000-0"
        )
    return job_id, entry_id


@dataclass(frozen=True)
class DeadLetter:
    """One rejected event: where it came from, why, and (a capped copy of) its payload."""

    job_id: str
    entry_id: str
    reason: str
    payload: str
    payload_bytes: int
    ts: float
    redacted: bool = False  # a secret was masked: the payload is no longer the event sent

    def fields(self) -> dict[str, str]:
        """Return the stream fields stored in ``ckpt:dead``."""
        return {
            "job_id": self.job_id,
            "entry_id": self.entry_id,
            "reason": self.reason,
            "payload": self.payload,
            "payload_bytes": str(self.payload_bytes),
            "ts": repr(self.ts),
            "redacted": "1" if self.redacted else "0",
        }

    @classmethod
    def from_fields(cls, fields: dict[Any, Any]) -> DeadLetter:
        """Decode the stream fields of a dead letter."""
        text = {_payload_text(k): _payload_text(v) for k, v in fields.items()}
        return cls(
            text.get("job_id", ""),
            text.get("entry_id", ""),
            text.get("reason", ""),
            text.get("payload", ""),
            int(text.get("payload_bytes", "0") or 0),
            float(text.get("ts", "0") or 0),
            text.get("redacted") == "1" or REDACTED.decode() in text.get("payload", ""),
        )


REDACTED = b"[REDACTED]"  # the marker of letters written before redaction.redact existed
SECRET_MARGIN_BYTES = 512


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
    # Redacted before the cut, with a margin, so that no secret is left half-visible at it.
    text = data[: max_bytes + SECRET_MARGIN_BYTES].decode("utf-8", errors="backslashreplace")
    payload = redact(text, secrets)
    redacted = payload != text or redact(reason, secrets) != reason
    payload = payload.encode("utf-8", errors="backslashreplace")[:max_bytes]
    return DeadLetter(
        job_id, entry_id, redact(reason, secrets)[:1000],
        payload.decode("utf-8", errors="ignore"), size, time.time(), redacted,
    )  # fmt: skip


def add_dead_letters(
    pipe: Any, letters: list[DeadLetter], max_per_job: int = DEAD_PER_JOB_DEFAULT
) -> None:
    """Queue XADDs of ``letters`` to their job's dead letters (inside the state commit).

    Each job keeps its newest ``max_per_job`` letters.
    """
    for letter in letters:
        pipe.xadd(keys.dead(letter.job_id), letter.fields(), maxlen=max_per_job, approximate=False)


def list_dead_letters(
    redis: Any, count: int = 100, job_id: str | None = None
) -> list[tuple[str, DeadLetter]]:
    """Return the newest dead letters of one job, or of every job, newest first.

    Each is returned with its reference ``<job>/<entry id>``.
    """
    jobs = [job_id] if job_id is not None else dead_letter_jobs(redis)
    per_job = []
    for job in jobs:
        entries = redis.xrevrange(keys.dead(job), count=count)
        per_job.append(
            [(f"{job}/{_payload_text(i)}", DeadLetter.from_fields(f)) for i, f in entries]
        )
    newest = heapq.merge(*per_job, key=lambda found: -found[1].ts)
    return list(newest)[:count]


def dead_letter_jobs(redis: Any) -> list[str]:
    """Return the jobs that have dead letters (a SCAN: an operator's tool, not a hot path)."""
    found = {keys.job_of_dead_key(key) for key in scan_masters(redis, keys.DEAD_PATTERN)}
    return sorted(job for job in found if job)


def fetch_dead_letter(redis: Any, ref: str) -> DeadLetter | None:
    """Return the dead letter named ``ref`` (``<job>/<entry id>``), or None if there is none.

    Raises:
        BadDeadLetterRef: if ``ref`` is malformed.
    """
    job_id, entry_id = parse_ref(ref)
    found = redis.xrange(keys.dead(job_id), entry_id, entry_id)
    return DeadLetter.from_fields(found[0][1]) if found else None


def delete_dead_letters(redis: Any, refs: list[str]) -> int:
    """Delete the dead letters named by ``refs``; return how many existed."""
    deleted = 0
    for ref in refs:
        job_id, entry_id = parse_ref(ref)
        deleted += int(redis.xdel(keys.dead(job_id), entry_id))
    return deleted


def _payload_text(value: Any) -> str:
    return str(as_text(value, errors="backslashreplace"))  # pods' bytes: shown, not trusted
