"""Committing drains: one compare-and-set per job, many jobs per call (``lua/commit.lua``).

Both drains, the pipelined :func:`~scorer_worker.bulk.drain_many` and its per-job fallback
:func:`~scorer_worker.drain.drain_job`, commit through :func:`commit_all`. For each job it
writes, in one atomic step: the state's head and changed records, the levels copied into the
meta hash, the steps changed, the decision, the dead letters, and the trim of the drained
stream entries. It writes a job only if the state's head is still the one the drain read
(every commit changes the head: its cursor or version moves), so of two drains of the same
job, the later one writes nothing and reads again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .deadletter import DEAD_PER_JOB_DEFAULT, DeadLetter
from .decision import DecisionWrite
from .keys import MetaField
from .scripts import Wait, per_job, run_chunked
from .settings import Settings
from .state import HEAD_FIELD, JobState
from .streams import next_stream_id

# Redis runs a script alone: a chunk keeps each call to a millisecond or two.
COMMIT_CHUNK_JOBS = 100


@dataclass
class Commit:
    """Everything one drain writes for one job."""

    job_id: str
    expected_head: str  # the head read ('' for none): written only if it is still that one
    head: str
    records: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str | int] = field(default_factory=dict)
    changes: dict[str, int] = field(default_factory=dict)  # step -> version that changed it
    decision: DecisionWrite | None = None
    dead_letters: list[DeadLetter] = field(default_factory=list)
    dead_max_per_job: int = DEAD_PER_JOB_DEFAULT
    clear_meta: list[str] = field(default_factory=list)
    full: bool = False  # the state hash is rewritten whole (records dropped, or unpacked)
    drop_stream: bool = False  # a job cut off: its backlog is freed unread
    cursor: str = ""  # the stream is trimmed up to and including it

    def args(self) -> list[Any]:
        """The commit's ARGV part (the layout is in ``lua/commit.lua``)."""
        flags = ("F" if self.full else "") + ("D" if self.drop_stream else "")
        if self.decision is not None and self.decision.replace:
            flags += "R"
        args: list[Any] = [self.expected_head, self.head, flags]
        decided = self.decision.fields if self.decision is not None else {}
        scored = {str(step): score for step, score in self.changes.items()}
        for pairs in (self.records, self.meta):
            _pairs(args, pairs.items())
        _pairs(args, ((score, step) for step, score in scored.items()))
        _pairs(args, decided.items())
        args.append(len(self.clear_meta))
        args.extend(self.clear_meta)
        args.append(len(self.dead_letters))
        for letter in self.dead_letters:
            _pairs(args, letter.fields().items())
        args.append(self.dead_max_per_job)
        args.extend(_trim(self.cursor))
        return args


def _pairs(args: list[Any], pairs: Iterable[tuple[Any, Any]]) -> None:
    flat = [item for pair in pairs for item in pair]
    args.append(len(flat))
    args.extend(flat)


def _trim(cursor: str) -> tuple[str, str]:
    """(id to trim below, id to delete): every entry up to and including ``cursor`` goes."""
    if not cursor:
        return "", ""
    following = next_stream_id(cursor)
    if following is None:  # the largest id: trim below it and delete it
        return cursor, cursor
    return following, ""


def commit_all(redis: Any, commits: list[Commit], wait: Wait | None = None) -> list[bool]:
    """Run ``commits`` (a script call per chunk, one pipeline per node); return which were
    written, in order.

    A commit not written lost the race: its job's head changed since it was read.

    Args:
        redis: the data side.
        commits: one per job.
        wait: wait for replicas after each node's commits (``CKPT_DATA_WAIT_REPLICAS``).

    Raises:
        ReplicationTimeout: ``wait`` was given and too few replicas acknowledged in time.
    """
    job_ids = [commit.job_id for commit in commits]
    replies = run_chunked(
        redis, "commit", job_ids, keys.drain_keys, [HEAD_FIELD], chunk_jobs=COMMIT_CHUNK_JOBS,
        job_args=lambda index: commits[index].args(), wait=wait,
    )  # fmt: skip
    return [bool(ok) for ok in per_job(replies, len(commits))]


def wait_option(settings: Settings) -> Wait | None:
    """The commits' ``WAIT`` (``CKPT_DATA_WAIT_REPLICAS``, ``CKPT_DATA_WAIT_TIMEOUT_MS``), or
    None when no replica is waited for."""
    if settings.data_wait_replicas <= 0:
        return None
    return Wait(settings.data_wait_replicas, settings.data_wait_timeout_ms)


def meta_fields(state: JobState, drained_at: float | None = None) -> dict[str, str | int]:
    """The levels a commit copies into the job's meta hash (what the pump compares).

    ``drained_at`` (trusted time of a commit that drained events) tells the pump when the job
    last talked, for the stall report.
    """
    fields: dict[str, str | int] = {
        MetaField.CURSOR: state.cursor,
        MetaField.VERSION: state.version,
        MetaField.STATUS: state.status,
        MetaField.EVAL_VERSION: state.eval_version,
    }
    if drained_at is not None:
        fields[MetaField.DRAINED_AT] = repr(drained_at)
    return fields


def changed_steps(state: JobState, everything: bool = False) -> dict[str, int]:
    """Steps whose train or eval record this commit wrote (all loaded ones after a full load)."""
    scores: dict[str, int] = {}
    for records in (state.train, state.evals):
        for step, record in records.items():
            if everything or record.changed == state.version:
                scores[str(step)] = max(scores.get(str(step), 0), record.changed)
    return scores
