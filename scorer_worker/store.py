"""Reading a job's state for a drain, and committing it (state, cursor and version together).

The state is a hash, ``ckpt:{<job>}:state``: a small ``head`` (cursor, version, attempts, end,
summary) and one field per step record (``t:40``, ``e:40``, ``s:40``). A drain reads the head
and only the records its batch touches, so applying an event costs the same for a job with
ten evals as for one with ten thousand. A batch holding a ``train_begin`` (which may drop
records of an earlier attempt) reads the whole hash. Finished jobs are compacted into one
zlib blob.

Each commit also adds the steps it changed to ``ckpt:{<job>}:changes`` (scored by version),
so the sink reads the head (with its :class:`~scorer_worker.summary.Summary`) and only the
records changed since its last write: a flush costs the same at any history length too.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from typing import Any

from redis.exceptions import WatchError

from producer.wire import as_text

from . import commit as commits
from . import keys
from .deadletter import DEAD_PER_JOB_DEFAULT, DeadLetter
from .decision import decision_basis, decision_write
from .errors import StateConflict
from .models import WireEvent
from .ranking import summarize
from .scoring import get_profile
from .state import HEAD_FIELD, PACKED_FIELD, RECORD_PREFIXES, JobState
from .streams import DRAIN_READ_MAX_BYTES, OversizeEntry, read_after
from .summary import retained_steps

_UNREAD = object()


def load_state(redis: Any, job_id: str, profile: str = "default") -> JobState:
    """Return the committed state of ``job_id``, all records loaded (fresh if none)."""
    return JobState.from_fields(job_id, redis.hgetall(keys.state(job_id)), profile)


def compact_state(redis: Any, job_id: str) -> bool:
    """Store a finished job's records as one compressed blob; return True if compacted.

    The records are packed as stored, not decoded: compaction runs in the pump, beside the
    work it schedules. A later event (a replay, say) unpacks them in the drain that applies it.
    The head changes (it says ``packed``), so a drain that read the job before loses its
    compare-and-set and reads again.
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


class StateTransaction:
    """One batch of one job: the state read, the records its events need, then the commit.

    Optimistic: nothing is locked. Read with :meth:`read_events` (or hand over entries read
    elsewhere), load what folding them reads (:meth:`load_for`, or :meth:`wanted_for` and
    :meth:`add_records` when the reads are pipelined across jobs), fold into :attr:`state`,
    then :meth:`commit` (or :meth:`prepare` for :func:`~scorer_worker.commit.commit_all`).
    The commit writes only if the state's head is still the one read here.

    Args:
        head: the head already read (None: the job has none); read here when not given.
        wait: wait for replicas after the commit (:func:`~scorer_worker.commit.wait_option`).
    """

    def __init__(
        self, redis: Any, job_id: str, profile: str = "default", head: Any = _UNREAD,
        wait: commits.Wait | None = None,
    ) -> None:  # fmt: skip
        self.job_id = job_id
        self._redis = redis
        self.wait = wait
        self._key = keys.state(job_id)
        if head is _UNREAD:
            head = redis.hget(self._key, HEAD_FIELD)
        self._head = as_text(head) or ""
        self.state = JobState.from_head(job_id, head, profile)
        self._basis = decision_basis(self.state.summary)
        self._loaded: dict[str, str | None] = {}
        self._full = False
        self.last_read_limit = 0  # how many entries the last read_events asked for

    def read_events(
        self, count: int, max_bytes: int = DRAIN_READ_MAX_BYTES
    ) -> list[tuple[str, dict | OversizeEntry]]:
        """Return up to ``count`` stream entries after the state's cursor (a bounded read)."""
        entries, self.last_read_limit = read_after(
            self._redis, keys.events(self.job_id), self.state.cursor, count, max_bytes
        )
        return entries

    @property
    def full(self) -> bool:
        """True once every record is loaded (the summary is then rebuilt, not updated)."""
        return self._full

    def wanted_for(self, events: Iterable[WireEvent]) -> set[str] | None:
        """The record fields folding ``events`` reads; None when it reads every record.

        Every record is read for a packed state, an old head without a summary, or a new
        attempt (a ``train_begin`` may drop records of the earlier one).
        """
        events, state = list(events), self.state
        begins = any(e.kind == "train_begin" for e in events)
        if state.packed or state.summary is None or (begins and state.version > 0):
            return None
        summary, prefixes, highest = state.summary, RECORD_PREFIXES, state.summary.max_eval_step
        names = set()
        for event in events:
            if event.kind == "checkpoint_saved":
                names.add(f"{prefixes['saves']}{event.step}")
                steps = retained_steps(event.info.retained)  # the evals its pick may need
                names.update(f"{prefixes['evals']}{s}" for s in steps if _at_most(s, highest))
            elif event.kind in ("train_log", "eval") and not summary.proves_absent(event):
                prefix = prefixes["train"] if event.kind == "train_log" else prefixes["evals"]
                names.add(f"{prefix}{event.step}")
        return names - set(self._loaded)

    def load_for(self, events: Iterable[WireEvent]) -> None:
        """Load the records that folding ``events`` reads: theirs, or all (see wanted_for)."""
        wanted = self.wanted_for(events)
        if wanted is None:
            self.load_all()
        else:
            self._load_fields(wanted)

    def load_evals(self, steps: Iterable[int]) -> None:
        """Load the evaluation records at ``steps`` that are not loaded (or folded in) yet."""
        known = self.state.evals
        self._load_fields({f"{RECORD_PREFIXES['evals']}{s}" for s in steps if s not in known})

    def add_records(self, found: dict[str, Any]) -> None:
        """Take record fields read elsewhere (None for absent ones), as :meth:`load_for` would."""
        found = {name: as_text(value) for name, value in found.items()}
        self._loaded.update(found)
        self.state.load_records(found)

    def _load_fields(self, wanted: set[str]) -> None:
        wanted -= set(self._loaded)
        if wanted and not self._full:
            names = sorted(wanted)
            values = self._redis.hmget(self._key, names)
            self.add_records(dict(zip(names, values, strict=True)))

    def load_all(self) -> None:
        """Load the whole state afresh (head and every record), dropping what was folded."""
        if self._full:
            return
        fields = self._redis.hgetall(self._key)
        self._head = as_text(fields.get(HEAD_FIELD.encode(), fields.get(HEAD_FIELD))) or ""
        self.state = JobState.from_fields(self.job_id, fields, self.state.profile)
        self._basis = decision_basis(self.state.summary)
        self._loaded = self.state.record_fields()
        self._full = True

    def prepare(
        self,
        dead_letters: Iterable[DeadLetter] = (),
        clear_meta: Iterable[str] = (),
        dead_max_per_job: int = DEAD_PER_JOB_DEFAULT,
        drop_stream: bool = False,
        drained_at: float | None = None,
    ) -> commits.Commit:
        """Return the commit of the folded state: records, levels, changes, decision, trim."""
        state, full = self.state, self._full
        if full:  # the reference rebuild; it also refreshes each eval's stored context
            state.summary = summarize(state, get_profile(state.profile))
        fields = state.record_fields()
        changed = fields if full else {n: v for n, v in fields.items() if self._loaded.get(n) != v}
        return commits.Commit(
            self.job_id, self._head, state.head_json(), changed,
            commits.meta_fields(state, drained_at), commits.changed_steps(state, everything=full),
            decision_write(state, self._basis, full), list(dead_letters), dead_max_per_job,
            list(clear_meta), full, drop_stream, state.cursor,
        )  # fmt: skip

    def commit(self, dead_letters: Iterable[DeadLetter] = (), **options: Any) -> None:
        """Write the folded state atomically (see :meth:`prepare` for ``options``).

        Raises:
            StateConflict: the state changed since it was read.
        """
        commit = self.prepare(dead_letters, **options)
        if not commits.commit_all(self._redis, [commit], self.wait)[0]:
            raise StateConflict(f"state of {self.job_id} changed concurrently")


def _at_most(step: int, highest: int | None) -> bool:
    return highest is not None and step <= highest
