"""Reading and committing a job's state: state, cursor and version change in one transaction.

The state is a hash, ``ckpt:{<job>}:state``: a small ``head`` (cursor, version, attempts, end)
and one field per step record (``t:40``, ``e:40``, ``s:40``). A drain reads the head and only
the records its batch touches, so applying an event costs the same for a job with ten evals
as for one with ten thousand. A batch holding a ``train_begin`` (which may drop records of an
earlier attempt) reads the whole hash. Finished jobs are compacted into one zlib blob.

Each commit also adds the steps it changed to ``ckpt:{<job>}:changes`` (scored by version),
so the sink reads the head (with its :class:`~scorer_worker.summary.Summary`) and only the
records changed since its last write: a flush costs the same at any history length too.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError, WatchError

from producer.wire import MAX_EVENT_BYTES, as_text

from . import keys
from .deadletter import DEAD_PER_JOB_DEFAULT, DeadLetter, add_dead_letters
from .decision import decision_basis, decision_write
from .errors import StateConflict
from .models import WireEvent
from .ranking import summarize
from .scoring import get_profile
from .scripts import registered
from .state import HEAD_FIELD, PACKED_FIELD, RECORD_PREFIXES, JobState

_KIND_PREFIX = {
    "train_log": RECORD_PREFIXES["train"],
    "eval": RECORD_PREFIXES["evals"],
    "checkpoint_saved": RECORD_PREFIXES["saves"],
}


def load_state(redis: Any, job_id: str, profile: str = "default") -> JobState:
    """Return the committed state of ``job_id``, all records loaded (fresh if none)."""
    return JobState.from_fields(job_id, redis.hgetall(keys.state(job_id)), profile)


MAX_ID_PART = 2**64 - 1  # both halves of a stream id are unsigned 64-bit integers


def next_stream_id(entry_id: str) -> str | None:
    """Return the smallest stream id greater than ``entry_id``; None when there is none.

    A producer may XADD with an explicit id, up to ``18446744073709551615-18446744073709551615``;
    no id follows that one, so the drain must neither read nor trim past it.
    """
    millis, seq = stream_id_key(entry_id)
    if seq < MAX_ID_PART:
        return f"{millis}-{seq + 1}"
    if millis < MAX_ID_PART:
        return f"{millis + 1}-0"
    return None


def trim_drained(pipe: Any, job_id: str, cursor: str) -> None:
    """Queue on ``pipe`` the removal of every stream entry up to and including ``cursor``."""
    # Exact trims (redis-py's default is approximate, which keeps whole nodes of drained
    # entries): the pipelined drain reads the stream from its start and expects no entry
    # at or before the cursor, like the commit script leaves it.
    following = next_stream_id(cursor)
    if following is None:  # the largest id: keep nothing at or below it
        pipe.xtrim(keys.events(job_id), minid=cursor, approximate=False)
        pipe.xdel(keys.events(job_id), cursor)
    else:
        pipe.xtrim(keys.events(job_id), minid=following, approximate=False)


def stream_id_key(entry_id: str | bytes) -> tuple[int, int]:
    """Return a stream entry id as ``(millis, sequence)``, which orders like the stream."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


def compact_state(redis: Any, job_id: str) -> bool:
    """Store a finished job's records as one compressed blob; return True if compacted.

    The records are packed as stored, not decoded: compaction runs in the pump, beside the
    work it schedules. A later event (a replay, say) unpacks them in the drain that applies it.
    """
    key = keys.state(job_id)
    with redis.pipeline(transaction=True) as pipe:
        try:
            pipe.watch(key)
            fields = {as_text(name): value for name, value in pipe.hgetall(key).items()}
            if len(fields) <= 1 or PACKED_FIELD in fields or HEAD_FIELD not in fields:
                return False
            head = JobState.from_head(job_id, fields.pop(HEAD_FIELD))
            head.packed = True
            records = json.dumps({name: as_text(value) for name, value in fields.items()})
            packed = {HEAD_FIELD: head.head_json(), PACKED_FIELD: zlib.compress(records.encode())}
            pipe.multi()
            pipe.delete(key)
            pipe.hset(key, mapping=packed)
            pipe.execute()
            return True
        except WatchError:
            return False  # a drain committed meanwhile: the job is live again


# A whole stream entry may hold one ``event`` field of MAX_EVENT_BYTES, plus the name.
ENTRY_MAX_BYTES = MAX_EVENT_BYTES + 64
DRAIN_READ_MAX_BYTES = 16 * 1024 * 1024
DEAD_HEAD_BYTES = 4096
# KEYS: the stream. ARGV: start id, count, entry cap, head bytes. Each entry within the cap
# is returned as {id, fields}; a larger one as {id, size, head of its first value}.


@dataclass(frozen=True)
class OversizeEntry:
    """A stream entry larger than the event cap, read as its size and a head only."""

    size: int
    head: bytes

    @property
    def reason(self) -> str:
        """Why it is dead-lettered."""
        return f"entry of {self.size} bytes exceeds {ENTRY_MAX_BYTES} (all fields counted)"


def stream_bytes(redis: Any, key: str) -> int | None:
    """Return the memory a stream takes (``MEMORY USAGE``, exact), or None if unknown.

    Streams are trimmed as they are drained, so this is the size of what awaits draining.
    Unknown (a server without ``MEMORY``, e.g. fakeredis) makes readers take the bounded path.
    """
    try:
        return int(redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)
    except ResponseError:
        return None


def _bounded_entry(row: list) -> tuple[str, dict | OversizeEntry]:
    if len(row) == 2:
        flat = row[1]
        return as_text(row[0]), dict(zip(flat[::2], flat[1::2], strict=True))
    return as_text(row[0]), OversizeEntry(int(row[1]), row[2])


class StateTransaction:
    """A WATCH/MULTI transaction over one job's state hash.

    Use as a context manager: :meth:`read_events`, :meth:`load_for` the valid events, fold
    them into :attr:`state`, then :meth:`commit`. If another process committed in between,
    :meth:`commit` raises :class:`StateConflict` and nothing is written.
    """

    def __init__(self, redis: Any, job_id: str, profile: str = "default") -> None:
        self.job_id = job_id
        self._redis = redis
        self._key = keys.state(job_id)
        self._pipe = redis.pipeline(transaction=True)
        self._pipe.watch(self._key)
        head = self._pipe.hget(self._key, HEAD_FIELD)
        self.state = JobState.from_head(job_id, head, profile)
        self._decision_basis = decision_basis(self.state.summary)
        self._loaded: dict[str, str | None] = {}
        self._full = False
        self.last_read_limit = 0  # how many entries the last read_events asked for

    def __enter__(self) -> StateTransaction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pipe.reset()

    def read_events(
        self, count: int, max_bytes: int = DRAIN_READ_MAX_BYTES
    ) -> list[tuple[str, dict | OversizeEntry]]:
        """Return up to ``count`` stream entries after the state's cursor.

        When the stream holds more than ``max_bytes``, the entries are read through a script
        that hands over only entries within the event cap (and a capped head of the others,
        as :class:`OversizeEntry`), fewer of them: no read loads more than about
        ``max_bytes``, whatever a producer appended.
        """
        following = next_stream_id(self.state.cursor)
        if following is None:
            return []  # the cursor is the largest possible id: nothing can follow it
        events = keys.events(self.job_id)
        self.last_read_limit = count
        measured = stream_bytes(self._pipe, events)
        if measured is not None and measured <= max_bytes:
            entries = self._pipe.xrange(events, following, "+", count)
            return [(as_text(entry_id), fields) for entry_id, fields in entries]
        bounded = self.last_read_limit = max(1, min(count, max_bytes // ENTRY_MAX_BYTES))
        script = registered(self._redis, "bounded_read")
        args = [following, bounded, ENTRY_MAX_BYTES, DEAD_HEAD_BYTES]
        rows = script(keys=[events], args=args, client=self._pipe)
        return [_bounded_entry(row) for row in rows]

    @property
    def full(self) -> bool:
        """True once every record is loaded (the summary is then rebuilt, not updated)."""
        return self._full

    def load_for(self, events: Iterable[WireEvent]) -> None:
        """Load the records that folding ``events`` reads: theirs, or all for a train_begin."""
        events = list(events)
        state = self.state
        begins = any(e.kind == "train_begin" for e in events)
        if state.packed or state.summary is None or (begins and state.version > 0):
            self.load_all()  # a new job (version 0) has nothing stored to load
            return
        kinds, known = _KIND_PREFIX, state.summary
        wanted = [e for e in events if e.kind in kinds and not known.proves_absent(e)]
        self._load_fields({f"{kinds[e.kind]}{e.step}" for e in wanted})

    def load_evals(self, steps: Iterable[int]) -> None:
        """Load the evaluation records at ``steps`` that are not loaded (or folded in) yet."""
        known = self.state.evals
        self._load_fields({f"{RECORD_PREFIXES['evals']}{s}" for s in steps if s not in known})

    def _load_fields(self, wanted: set[str]) -> None:
        wanted -= set(self._loaded)
        if wanted and not self._full:
            names = sorted(wanted)
            values = self._pipe.hmget(self._key, names)
            found = {name: as_text(value) for name, value in zip(names, values, strict=True)}
            self._loaded.update(found)
            self.state.load_records(found)

    def load_all(self) -> None:
        """Load the whole state afresh (head and every record), dropping what was folded."""
        if self._full:
            return
        self.state = JobState.from_fields(
            self.job_id, self._pipe.hgetall(self._key), self.state.profile
        )
        self._loaded = self.state.record_fields()
        self._full = True

    def commit(
        self,
        dead_letters: list[DeadLetter],
        clear_fields: Iterable[str] = (),
        dead_max_per_job: int = DEAD_PER_JOB_DEFAULT,
        drop_stream: bool = False,
        drained_at: float | None = None,
    ) -> None:
        """Write state (with cursor and version), decision, dead letters, stream trim atomically.

        Raises:
            StateConflict: the state changed since it was read.
        """
        state, pipe = self.state, self._pipe
        if self._full:  # the reference rebuild; it also refreshes each eval's stored context
            state.summary = summarize(state, get_profile(state.profile))
        fields = state.record_fields()
        changed = {name: value for name, value in fields.items() if self._loaded.get(name) != value}
        pipe.multi()
        if self._full:
            pipe.delete(self._key)  # a full load may have dropped records or unpacked a blob
            changed = fields
        pipe.hset(self._key, mapping={HEAD_FIELD: state.head_json(), **changed})
        pipe.hset(keys.meta(self.job_id), mapping=meta_fields(state, drained_at))
        steps = changed_steps(state, everything=self._full)
        if steps:
            pipe.zadd(keys.changes(self.job_id), steps)
        decision = decision_write(state, self._decision_basis, self._full)
        if decision is not None:
            if decision.replace:
                pipe.delete(keys.decision(self.job_id))
            pipe.hset(keys.decision(self.job_id), mapping=decision.fields)
        add_dead_letters(pipe, dead_letters, dead_max_per_job)
        for name in clear_fields:  # e.g. the retry counters of a poison event now dead
            pipe.hdel(keys.meta(self.job_id), name, f"{name}:n")
        # Drained entries are kept in the state; trimming them bounds Redis memory per job.
        if drop_stream:  # a job cut off: its backlog is freed unread (UNLINK: in the background)
            pipe.unlink(keys.events(self.job_id))
        else:
            trim_drained(pipe, self.job_id, state.cursor)
        try:
            pipe.execute()
        except WatchError:
            raise StateConflict(f"state of {self.job_id} changed concurrently") from None


def meta_fields(state: JobState, drained_at: float | None = None) -> dict[str, str | int]:
    """The levels a commit copies into the job's meta hash (what the pump compares).

    ``drained_at`` (trusted time of a commit that drained events) tells the pump when the job
    last talked, for the stall report.
    """
    fields: dict[str, str | int] = {
        "cursor": state.cursor,
        "version": state.version,
        "status": state.status,
        "eval_version": state.eval_version,
    }
    if drained_at is not None:
        fields["drained_at"] = repr(drained_at)
    return fields


def changed_steps(state: JobState, everything: bool = False) -> dict[str, int]:
    """Steps whose train or eval record this commit wrote (all loaded ones after a full load)."""
    scores: dict[str, int] = {}
    for records in (state.train, state.evals):
        for step, record in records.items():
            if everything or record.changed == state.version:
                scores[str(step)] = max(scores.get(str(step), 0), record.changed)
    return scores
