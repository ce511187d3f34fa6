"""Per-job state: the set of facts the events established, folded order-independently.

Every fact is keyed so that applying the same events in any order, any number of times,
gives the same state (DESIGN section 4): per step, the record with the latest producer
timestamp wins; a ``train_begin`` that resumes from step ``s`` at time ``T`` drops every record
of an earlier attempt (timestamp before ``T``) past step ``s``, whether it arrived before or
after the ``train_begin``. The state also carries the stream cursor and a version, committed
together with it.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import asdict, dataclass, field, replace
from operator import attrgetter
from typing import Any

import pydantic_core

from producer.wire import MAX_STEP, as_text

from .models import CheckpointInfo, TrainBeginInfo, TrainEndInfo, WireEvent
from .summary import Summary

STATE_FORMAT = 1
RUNNING_STATUS = "running"  # a job's status while it has facts and no end (nor a cut-off)
INITIAL_CURSOR = "0-0"
HEAD_FIELD = "head"
PACKED_FIELD = "packed"
# Field prefixes of the per-step records in the state hash: "t:40" is the train log of step 40.
RECORD_PREFIXES = {"train": "t:", "evals": "e:", "saves": "s:"}
# events_lost: the largest count per publisher instance is kept (a duplicate or older report
# changes nothing; a restarted process, a new instance, adds its own), for the 64 instances
# with the largest counts (order-independent too); past that the row's sum is a lower bound.
MAX_LOSS_REPORTERS = 64
_NEVER_SUPERSEDED = ("train_begin", "events_lost")  # a resume drops records, not losses


@dataclass
class Begin:
    """A ``train_begin``: one training attempt."""

    ts: float
    resumed_from_step: int | None
    max_steps: int | None
    num_train_epochs: float | None
    save_total_limit: int | None
    output_dir: str | None = None


@dataclass
class TrainRecord:
    """The training log at one step."""

    ts: float
    epoch: float | None
    loss: float | None
    learning_rate: float | None
    grad_norm: float | None
    changed: int = 0  # state version that last changed this step (for incremental history)


@dataclass
class EvalRecord:
    """The evaluation at one step."""

    ts: float
    epoch: float | None
    eval_loss: float | None
    changed: int = 0
    # Derived context (not facts), kept so a new checkpoint can re-pick without a full load.
    paired_train_loss: float | None = None
    epochs_without_improvement: int = 0
    ordinal: int = 0  # position among the job's evaluations by step (0 for the first)


@dataclass
class SaveRecord:
    """A ``checkpoint_saved``: the folder saved and the folders present after rotation."""

    ts: float
    checkpoint: str
    retained: list[str]


@dataclass
class End:
    """The ``train_end`` of the latest attempt."""

    ts: float
    step: int
    status: str
    error: str | None
    train_runtime: float | None
    train_loss: float | None


@dataclass
class JobState:
    """Everything the scorer knows about one job, plus its cursor and version."""

    job_id: str
    version: int = 0
    cursor: str = INITIAL_CURSOR
    profile: str = "default"
    begins: list[Begin] = field(default_factory=list)
    train: dict[int, TrainRecord] = field(default_factory=dict)
    evals: dict[int, EvalRecord] = field(default_factory=dict)
    saves: dict[int, SaveRecord] = field(default_factory=dict)
    end: End | None = None
    dead_letters: int = 0
    # Trusted facts, set only by the scorer from what a trusted process decided (the meta
    # hash), never by an event: a pod cut off at a limit, a job reported silent.
    cut_off: str | None = None  # why the job was cut off; the row ends failed with it
    stalled_since: float | None = None  # trusted time the job was found silent, until it talks
    eval_version: int = 0  # state version at which an evaluation last changed
    packed: bool = False  # the records are stored compressed (a finished job)
    summary: Summary | None = None  # the row's aggregates; None until rebuilt from all records
    events_lost: dict[str, int] = field(default_factory=dict)  # publisher instance: its count

    def apply(self, event: WireEvent) -> bool:
        """Fold one validated event into the state.

        Returns:
            True when the state changed (a duplicate or superseded event changes nothing).
        """
        if event.kind not in _NEVER_SUPERSEDED and self._superseded(event.ts, event.step):
            return False
        return _APPLY[event.kind](self, event)

    def would_change(self, event: WireEvent) -> bool:
        """Return True when applying ``event`` would change the state; the state is untouched."""
        trial = replace(self, begins=list(self.begins), train=dict(self.train),
                        evals=dict(self.evals), saves=dict(self.saves),
                        events_lost=dict(self.events_lost))  # fmt: skip
        return trial.apply(event)

    @property
    def events_lost_total(self) -> int:
        """Events the job's publishers reported lost, summed (capped at what a row holds)."""
        return min(sum(self.events_lost.values()), MAX_STEP)

    @property
    def status(self) -> str:
        """The job's status: its end's, ``failed`` when cut off, else ``running``."""
        if self.cut_off is not None:
            return "failed"
        return self.end.status if self.end else RUNNING_STATUS

    @property
    def first_ts(self) -> float | None:
        """Producer time of the earliest kept fact (the run's start)."""
        return min(self._timestamps(), default=None)

    @property
    def last_ts(self) -> float | None:
        """Producer time of the latest kept fact."""
        return max(self._timestamps(), default=None)

    def _timestamps(self) -> list[float]:
        kept = (*self.begins, *self.train.values(), *self.evals.values(), *self.saves.values())
        return [r.ts for r in kept] + ([self.end.ts] if self.end is not None else [])

    @property
    def latest_begin(self) -> Begin | None:
        """The begin of the latest attempt."""
        return max(self.begins, key=_rank, default=None)

    @property
    def latest_save(self) -> SaveRecord | None:
        """The most recent ``checkpoint_saved`` (its ``retained`` list is authoritative)."""
        return max(self.saves.values(), key=lambda s: (s.ts, s.checkpoint), default=None)

    @property
    def max_step(self) -> int:
        """The highest step any kept record reached."""
        ended = [self.end.step] if self.end is not None else []
        return max([*self.train, *self.evals, *self.saves, *ended], default=0)

    def _superseded(self, ts: float, step: int) -> bool:
        return any(
            b.resumed_from_step is not None and ts < b.ts and step > b.resumed_from_step
            for b in self.begins
        )

    def _apply_begin(self, event: WireEvent) -> bool:
        info: TrainBeginInfo = event.info
        begin = Begin(event.ts, info.resumed_from_step, info.max_steps, info.num_train_epochs,
                      info.save_total_limit, info.output_dir)  # fmt: skip
        if any(_rank(b) == _rank(begin) for b in self.begins):
            return False  # a duplicate
        # Two different begins at one time are both kept: each drops what it supersedes, so
        # the records kept never depend on which of the two arrived first.
        self.begins = sorted([*self.begins, begin], key=_rank)
        self._drop_superseded(begin)
        return True

    def _drop_superseded(self, begin: Begin) -> None:
        if self.end is not None and self.end.ts < begin.ts:
            self.end = None  # a new attempt started after that one ended
        if begin.resumed_from_step is None:
            return
        for records in (self.train, self.evals, self.saves):
            for step in [s for s, r in records.items() if r.ts < begin.ts]:
                if step > begin.resumed_from_step:
                    del records[step]

    def _apply_train_log(self, event: WireEvent) -> bool:
        metrics = event.metrics
        record = TrainRecord(event.ts, event.epoch, metrics.get("loss"),
                             metrics.get("learning_rate"), metrics.get("grad_norm"))  # fmt: skip
        return self._put(self.train, event.step, record)

    def _apply_eval(self, event: WireEvent) -> bool:
        record = EvalRecord(event.ts, event.epoch, event.metrics.get("eval_loss"))
        return self._put(self.evals, event.step, record)

    def _apply_checkpoint(self, event: WireEvent) -> bool:
        info: CheckpointInfo = event.info
        record = SaveRecord(event.ts, info.checkpoint, sorted(set(info.retained)))
        return self._put(self.saves, event.step, record)

    def _apply_end(self, event: WireEvent) -> bool:
        info: TrainEndInfo = event.info
        if any(b.ts > event.ts for b in self.begins):
            return False  # this attempt was followed by another
        metrics = event.metrics
        end = End(event.ts, event.step, info.status, info.error,
                  metrics.get("train_runtime"), metrics.get("train_loss"))  # fmt: skip
        if self.end is not None and _rank(self.end) >= _rank(end):
            return False
        self.end = end
        return True

    def _apply_events_lost(self, event: WireEvent) -> bool:
        counts, name, lost = self.events_lost, event.info.instance, event.info.lost
        if lost <= counts.get(name, 0):
            return False  # a duplicate, or an older report of that publisher
        counts[name] = lost
        if len(counts) > MAX_LOSS_REPORTERS:  # the smallest (count, instance) goes
            del counts[smallest := min(counts, key=lambda n: (counts[n], n))]
            return smallest != name
        return True

    def _put(self, records: dict[int, Any], step: int, record: Any) -> bool:
        current = records.get(step)
        if current is not None and _rank(current) >= _rank(record):
            return False
        if hasattr(record, "changed"):
            record.changed = self.version + 1
        if records is self.evals:
            self.eval_version = self.version + 1
        records[step] = record
        return True

    def to_json(self) -> str:
        """Encode the state (NaN and infinities are kept as JSON extensions)."""
        data = asdict(self)
        data["summary"] = self.summary.to_dict() if self.summary else None
        data["format"] = STATE_FORMAT
        for name in ("train", "evals", "saves"):
            data[name] = {str(step): list(rec.values()) for step, rec in data[name].items()}
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> JobState:
        """Decode a state written by :meth:`to_json`."""
        data = _decode_head(json.loads(text))
        for name, kind in (("train", TrainRecord), ("evals", EvalRecord), ("saves", SaveRecord)):
            data[name] = {int(step): kind(*values) for step, values in data[name].items()}
        return cls(**data)

    def head_json(self) -> str:
        """Encode everything but the per-step records (the small part read by every drain)."""
        # Built field by field: asdict(self) would deep-copy every loaded record first.
        data = {name: getattr(self, name) for name in HEAD_NAMES}
        data["begins"] = [dict(vars(begin)) for begin in self.begins]
        data["end"] = dict(vars(self.end)) if self.end else None
        data["summary"] = self.summary.to_dict() if self.summary else None
        data["events_lost"] = dict(self.events_lost)
        data["format"] = STATE_FORMAT
        # pydantic-core's encoder: a few times faster than json's on every drain's head, the
        # same JSON (NaN and Infinity spelled as json spells them, floats round-trip exactly).
        return pydantic_core.to_json(data).decode()

    @classmethod
    def from_head(cls, job_id: str, raw: str | bytes | None, profile: str = "default") -> JobState:
        """Decode a head written by :meth:`head_json`; no records are loaded yet."""
        if not raw:
            return cls(job_id, profile=profile, summary=Summary())
        return cls(**_decode_head(pydantic_core.from_json(raw)))  # json's too (older heads)

    def record_fields(self) -> dict[str, str]:
        """Encode every loaded record as ``{field: text}`` (fields like ``t:40``)."""
        fields = {}
        for name, prefix in RECORD_PREFIXES.items():
            for step, record in getattr(self, name).items():
                fields[f"{prefix}{step}"] = encode_record(record)
        return fields

    def load_records(self, fields: dict[Any, Any]) -> None:
        """Add records from ``{field: text}`` (as stored in the state hash); None values skip."""
        kinds = {"t:": (self.train, TrainRecord), "e:": (self.evals, EvalRecord),
                 "s:": (self.saves, SaveRecord)}  # fmt: skip
        for key, raw in fields.items():
            name = as_text(key)
            if raw is None or name[:2] not in kinds:
                continue
            records, kind = kinds[name[:2]]
            records[int(name[2:])] = decode_record(kind, raw)

    @classmethod
    def from_fields(cls, job_id: str, fields: dict[Any, Any], profile: str = "default") -> JobState:
        """Decode a whole state hash (head, records, and a packed blob if compacted)."""
        text = {as_text(k): v for k, v in fields.items()}
        state = cls.from_head(job_id, text.get(HEAD_FIELD), profile)
        if text.get(PACKED_FIELD):
            state.load_records(json.loads(zlib.decompress(text[PACKED_FIELD])))
        state.load_records(text)
        state.packed = False
        return state

    def fingerprint(self) -> str:
        """Encode the facts only (no cursor, version or change marks), to compare states."""
        data = json.loads(self.to_json())
        for name in ("version", "cursor", "dead_letters", "packed", "eval_version", "summary"):
            data.pop(name, None)
        for name, kind in (("train", TrainRecord), ("evals", EvalRecord)):
            facts = len(_fact_names(kind))
            data[name] = {step: values[:facts] for step, values in data[name].items()}
        return json.dumps(data, sort_keys=True)


HEAD_NAMES = tuple(name for name in JobState.__dataclass_fields__ if name not in RECORD_PREFIXES)


def _decode_head(data: dict[str, Any]) -> dict[str, Any]:
    # The typed parts (explicit: a head stored before loss reports existed has none).
    data.pop("format", None)
    data["begins"] = [Begin(**b) for b in data["begins"]]
    data["end"] = End(**data["end"]) if data["end"] else None
    data["summary"] = Summary.from_dict(data["summary"]) if data.get("summary") else None
    data["events_lost"] = {str(k): int(v) for k, v in (data.get("events_lost") or {}).items()}
    return data


def encode_record(record: Any) -> str:
    """Encode a record: train and eval records as comma-separated values, saves as JSON.

    The plain form is the hot path (one record per event): ``repr`` round-trips every float,
    NaN and infinities included, and an empty value is None.
    """
    if isinstance(record, (TrainRecord, EvalRecord)):
        return ",".join(["" if v is None else repr(v) for v in _VALUES[type(record)](record)])
    return json.dumps(list(_VALUES[type(record)](record)), separators=(",", ":"))


def decode_record(kind: type, raw: str | bytes) -> Any:
    """Decode what :func:`encode_record` wrote (or a JSON list, the earlier format)."""
    text = as_text(raw)
    if text.startswith("["):
        return kind(*json.loads(text))
    parts = text.split(",")
    return kind(*[None if p == "" else f(p) for f, p in zip(_PARSERS[kind], parts, strict=False)])


_VALUES = {
    kind: attrgetter(*kind.__dataclass_fields__) for kind in (TrainRecord, EvalRecord, SaveRecord)
}
# Integers stay integers; every other plain field is a float (or None).
_PARSERS = {
    kind: tuple(int if f.type == "int" else float for f in kind.__dataclass_fields__.values())
    for kind in (TrainRecord, EvalRecord)
}

_NOT_FACTS = ("changed", "paired_train_loss", "epochs_without_improvement", "ordinal")


def _fact_names(kind: type) -> tuple[str, ...]:
    # The facts come first in every record; bookkeeping and derived fields follow.
    return tuple(name for name in kind.__dataclass_fields__ if name not in _NOT_FACTS)


def _rank(record: Any) -> tuple[float, str]:
    # Latest timestamp wins; equal timestamps are broken by content so the winner never
    # depends on arrival order.
    values = {k: getattr(record, k) for k in _fact_names(type(record))}
    return (record.ts, json.dumps(values, sort_keys=True))


_APPLY = {
    "train_begin": JobState._apply_begin,
    "train_log": JobState._apply_train_log,
    "eval": JobState._apply_eval,
    "checkpoint_saved": JobState._apply_checkpoint,
    "train_end": JobState._apply_end,
    "events_lost": JobState._apply_events_lost,
}
