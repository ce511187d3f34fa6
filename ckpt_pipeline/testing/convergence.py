"""Where the pipeline stands, read from Redis as an operator would, and waiting for it.

Two readings of "done": :func:`levels` counts what is still in the streams and the versions
the sink has not written (a drain trims what it committed, so an empty stream is a drained
one); :func:`job_levels` reads each job's committed cursor, to tell how far into the entries
a harness added the scorer got.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from scorer_worker import keys
from scorer_worker.streams import stream_id_key


def wait_until(
    condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.05, what: str = ""
) -> float:
    """Poll ``condition`` until it holds; return when it did (monotonic seconds).

    Raises:
        TimeoutError: it did not hold within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f}s waiting for {what or condition}")
        time.sleep(interval_s)


# --- stream ids ---------------------------------------------------------------------------


def entry_seconds(entry_id: bytes | str) -> float:
    """The server time (unix seconds) at which a stream entry was added, from its id."""
    return stream_id_key(entry_id)[0] / 1000


def last_entry_ids(jobs: list[str], ids: list[list[bytes]]) -> dict[str, str]:
    """Each job's last entry id, from the per-job ids an XADD helper returned."""
    return {job: job_ids[-1].decode() for job, job_ids in zip(jobs, ids, strict=True)}


# --- per job: cursor and versions ---------------------------------------------------------


@dataclass(frozen=True)
class JobLevel:
    """One job's meta: the committed cursor, the state version, the version the sink wrote,
    the status."""

    cursor: str | None
    version: int
    written: int
    status: str | None


def job_levels(client: redis.Redis, job_ids: list[str]) -> list[JobLevel]:
    """Per job, in order: its committed cursor, version, written version and status."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.meta(job_id), "cursor", "version", "written_version", "status")
    return [
        JobLevel(
            cursor.decode() if cursor else None,
            int(version or 0),
            int(written or 0),
            status.decode() if status else None,
        )
        for cursor, version, written, status in pipe.execute()
    ]


def caught_up(client: redis.Redis, last_ids: dict[str, str], *, written: bool = True) -> bool:
    """True when every job's committed cursor reached the given entry id (and, with
    ``written``, the sink wrote the state's version)."""
    jobs = list(last_ids)
    for job_id, level in zip(jobs, job_levels(client, jobs), strict=True):
        if level.cursor is None or stream_id_key(level.cursor) < stream_id_key(last_ids[job_id]):
            return False
        if written and level.written < level.version:
            return False
    return True


# --- all jobs: drained and written --------------------------------------------------------


@dataclass
class Levels:
    """Where every job stands: undrained events, state version, written version."""

    behind_scoring: list[str] = field(default_factory=list)
    behind_sink: list[str] = field(default_factory=list)
    unstarted: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        """Every stream drained, every row at its state's version, every job with a state."""
        return not (self.behind_scoring or self.behind_sink or self.unstarted)


def levels(client: redis.Redis, job_ids: list[str]) -> Levels:
    """The jobs still holding stream entries, behind the sink, or without state."""
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xlen(keys.events(job_id))
        pipe.hmget(keys.meta(job_id), "version", "written_version")
    replies = pipe.execute()
    found = Levels()
    for job_id, length, (version, written) in zip(
        job_ids, replies[::2], replies[1::2], strict=True
    ):
        version, written = int(version or 0), int(written or 0)
        if length:
            found.behind_scoring.append(job_id)
        if version > written:
            found.behind_sink.append(job_id)
        if version == 0:
            found.unstarted.append(job_id)
    return found


def wait_converged(
    client: redis.Redis, job_ids: list[str], timeout_s: float = 60.0, poll_s: float = 0.1
) -> float:
    """Wait until every job's stream is drained and its row holds the state's version.

    A Redis that is down (restarting under the test) counts as not converged yet.

    Returns:
        The seconds it took.

    Raises:
        AssertionError: not converged within ``timeout_s`` (with what is still behind).
    """
    start = time.monotonic()
    while True:
        try:
            now = levels(client, job_ids)
            if now.converged:
                return time.monotonic() - start
        except redis.ConnectionError:
            now = Levels(unstarted=["<redis unreachable>"])
        if time.monotonic() - start > timeout_s:
            raise AssertionError(
                f"not converged after {timeout_s:.0f}s: {len(now.behind_scoring)} behind scoring, "
                f"{len(now.behind_sink)} behind the sink, {len(now.unstarted)} without state "
                f"(e.g. {(now.behind_scoring + now.behind_sink + now.unstarted)[:3]})"
            )
        time.sleep(poll_s)
