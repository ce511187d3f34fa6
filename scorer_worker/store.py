"""Reading and committing a job's state: state, cursor and version change in one transaction."""

from __future__ import annotations

from typing import Any

from redis.exceptions import WatchError

from . import keys
from .deadletter import DeadLetter, add_dead_letters
from .errors import StateConflict
from .state import JobState


def load_state(redis: Any, job_id: str, profile: str = "default") -> JobState:
    """Return the committed state of ``job_id`` (a fresh state if none was committed)."""
    raw = redis.get(keys.state(job_id))
    return JobState.from_json(raw) if raw else JobState(job_id, profile=profile)


def next_stream_id(entry_id: str) -> str:
    """Return the smallest stream id greater than ``entry_id`` (for XTRIM MINID)."""
    millis, _, seq = entry_id.partition("-")
    return f"{millis}-{int(seq or 0) + 1}"


class StateTransaction:
    """A WATCH/MULTI transaction over one job's state key.

    Use as a context manager: read with :attr:`state`, then :meth:`commit`. If another
    process committed in between, :meth:`commit` raises :class:`StateConflict` and nothing
    is written.
    """

    def __init__(self, redis: Any, job_id: str, profile: str = "default") -> None:
        self.job_id = job_id
        self._pipe = redis.pipeline(transaction=True)
        self._pipe.watch(keys.state(job_id))
        raw = self._pipe.get(keys.state(job_id))
        self.state = JobState.from_json(raw) if raw else JobState(job_id, profile=profile)

    def __enter__(self) -> StateTransaction:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pipe.reset()

    def read_events(self, count: int) -> list[tuple[str, dict]]:
        """Return up to ``count`` stream entries after the state's cursor."""
        entries = self._pipe.xrange(keys.events(self.job_id), f"({self.state.cursor}", "+", count)
        return [(_text(entry_id), fields) for entry_id, fields in entries]

    def commit(self, dead_letters: list[DeadLetter], clear_fields: list[str] = ()) -> None:
        """Write state (with cursor and version), dead letters and the stream trim atomically.

        Raises:
            StateConflict: the state changed since it was read.
        """
        state = self.state
        pipe = self._pipe
        pipe.multi()
        pipe.set(keys.state(self.job_id), state.to_json())
        status = state.end.status if state.end else "running"
        pipe.hset(
            keys.meta(self.job_id),
            mapping={"cursor": state.cursor, "version": state.version, "status": status},
        )
        add_dead_letters(pipe, dead_letters)
        for name in clear_fields:  # e.g. the retry counters of a poison event now dead
            pipe.hdel(keys.meta(self.job_id), name, f"{name}:n")
        # Drained entries are kept in the state; trimming them bounds Redis memory per job.
        pipe.xtrim(keys.events(self.job_id), minid=next_stream_id(state.cursor))
        try:
            pipe.execute()
        except WatchError:
            raise StateConflict(f"state of {self.job_id} changed concurrently") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
