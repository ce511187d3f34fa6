"""The Redis layout (DESIGN section 8): every key name, and the meta hash as a typed record.

Every per-job key carries the job's hash tag, so all of a job's keys share one Cluster slot
and a script touching them (passed in ``KEYS``) runs on one node. The meta hash's field names
are spelled here only, as :class:`MetaField`; :class:`JobMeta` reads the hash back typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from producer.wire import as_text, decision_key, is_valid_job_id, stream_key

JOBS = "ckpt:jobs"
DEAD_PATTERN = "ckpt:{*}:dead"  # SCAN pattern of every job's dead letters
SCORING_QUEUE = "scoring"
DRAIN_JOBS_TASK = "scorer_worker.tasks.drain_jobs"


def events(job_id: str) -> str:
    """The job's event stream."""
    return stream_key(job_id)


def state(job_id: str) -> str:
    """The job's state, cursor and version (one JSON string)."""
    return f"ckpt:{{{job_id}}}:state"


def decision(job_id: str) -> str:
    """The job's decision: scores by step and the pick (a hash its pod may read)."""
    return decision_key(job_id)


def dead(job_id: str) -> str:
    """The job's dead letters (a capped stream, committed with the state in one slot).

    Per job, so that no job can evict another's: a pod that floods junk fills only its own.
    """
    return f"ckpt:{{{job_id}}}:dead"


def job_of_dead_key(key: str | bytes) -> str | None:
    """Return the job id of a :func:`dead` key, or None for any other key."""
    text = as_text(key)
    if text.startswith("ckpt:{") and text.endswith("}:dead"):
        job_id = text[len("ckpt:{") : -len("}:dead")]
        return job_id if is_valid_job_id(job_id) else None
    return None


def changes(job_id: str) -> str:
    """Steps whose records changed, scored by the state version that changed them (a zset).

    The drain adds to it; the sink reads the steps above what it wrote and trims the rest.
    """
    return f"ckpt:{{{job_id}}}:changes"


def meta(job_id: str) -> str:
    """The job's registration and what the sink last wrote (a hash)."""
    return f"ckpt:{{{job_id}}}:meta"


def queued(job_id: str, queue: str) -> str:
    """Marker: a task of ``queue`` for this job is waiting (expires, so a lost task is retried)."""
    return f"ckpt:{{{job_id}}}:queued:{queue}"


def flush_lock(job_id: str) -> str:
    """Held while a flush of this job runs: one flush per job in flight."""
    return f"ckpt:{{{job_id}}}:flush-lock"


def drain_keys(job_id: str) -> list[str]:
    """The keys a drain reads and commits, in the order the drain scripts take them."""
    return [state(job_id), meta(job_id), events(job_id), changes(job_id), decision(job_id),
            dead(job_id)]  # fmt: skip


class MetaField(StrEnum):
    """The fields of a job's meta hash (:func:`meta`)."""

    # Copied from the state by every commit: what the pump and the sink compare.
    CURSOR = "cursor"
    VERSION = "version"
    STATUS = "status"
    EVAL_VERSION = "eval_version"
    DRAINED_AT = "drained_at"  # trusted time of the last commit that drained events
    # Written by the sink.
    WRITTEN_VERSION = "written_version"
    REFUSED_VERSION = "refused_version"  # the highest version refused for good
    LAST_FLUSH_AT = "last_flush_at"
    SINK_ERROR = "sink_error"
    SINK_ERROR_KIND = "sink_error_kind"  # "transient" or "permanent"
    # Written by the pump's limits, folded into the state by the next drain.
    CUT_OFF = "cut_off"  # why the job was cut off
    CUT_OFF_AT = "cut_off_at"
    STALLED_SINCE = "stalled_since"  # when the job was found silent
    # Written at registration.
    TOKEN = "token"
    REGISTERED_AT = "registered_at"
    POD_USER = "pod_user"
    POD_PASSWORD = "pod_password"


# The levels the pump's scan and the drain's read take, in this order (the scripts' ARGV).
LEVEL_FIELDS = (
    MetaField.VERSION, MetaField.WRITTEN_VERSION, MetaField.STATUS, MetaField.EVAL_VERSION,
    MetaField.LAST_FLUSH_AT, MetaField.REFUSED_VERSION,
)  # fmt: skip
SECRET_FIELDS = (MetaField.TOKEN, MetaField.POD_PASSWORD)  # what every output redacts
POISON_PREFIX = "poison:"  # poison:<entry id> (the reason) and poison:<entry id>:n (attempts)


def poison_fields(entry_id: str) -> tuple[str, str]:
    """The meta fields of an event whose application failed: (reason, attempts)."""
    return f"{POISON_PREFIX}{entry_id}", f"{POISON_PREFIX}{entry_id}:n"


@dataclass(frozen=True)
class Poison:
    """An event whose application raised: why, and how many attempts failed."""

    reason: str
    attempts: int


@dataclass(frozen=True)
class JobMeta:
    """A job's meta hash, typed (absent fields take the defaults)."""

    cursor: str | None = None
    version: int = 0
    status: str | None = None
    eval_version: int = 0
    drained_at: float | None = None
    written_version: int = 0
    refused_version: int = 0
    last_flush_at: float | None = None
    sink_error: str | None = None
    sink_error_kind: str | None = None
    cut_off: str | None = None
    cut_off_at: float | None = None
    stalled_since: float | None = None
    token: str | None = None
    registered_at: float | None = None
    pod_user: str | None = None
    pod_password: str | None = None
    poison: dict[str, Poison] = field(default_factory=dict)  # by entry id

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> JobMeta:
        """Read a meta hash as Redis returned it (bytes or str; HGETALL or zipped HMGET)."""
        text = {str(as_text(k)): as_text(v) for k, v in raw.items() if v is not None}
        values = {
            name: _PARSE.get(name, str)(value)
            for name, value in text.items()
            if name in _NAMES and value != ""
        }
        poison = _poison(text) if any(n.startswith(POISON_PREFIX) for n in text) else {}
        return cls(**values, poison=poison)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The job's secrets (token, pod password) that outputs must redact."""
        return tuple(v for v in (self.token, self.pod_password) if v)


def _poison(text: dict[str, Any]) -> dict[str, Poison]:
    found = {}
    for name, value in text.items():
        if name.startswith(POISON_PREFIX) and name.endswith(":n"):
            entry_id = name[len(POISON_PREFIX) : -len(":n")]
            reason = text.get(poison_fields(entry_id)[0]) or "scoring raised"
            found[entry_id] = Poison(str(reason), int(value))
    return found


_NAMES = frozenset(name.value for name in MetaField)
_PARSE: dict[str, Any] = {
    MetaField.VERSION: int,
    MetaField.EVAL_VERSION: int,
    MetaField.WRITTEN_VERSION: int,
    MetaField.REFUSED_VERSION: int,
    MetaField.DRAINED_AT: float,
    MetaField.LAST_FLUSH_AT: float,
    MetaField.CUT_OFF_AT: float,
    MetaField.STALLED_SINCE: float,
    MetaField.REGISTERED_AT: float,
}
