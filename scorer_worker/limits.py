"""Per-job limits and silence, checked by the trusted pump (DESIGN section 7).

A pod may only XADD to its own stream, but it can still flood it. Once a second the pump
reads, for each active job, its backlog (entries and bytes awaiting the drain) and, for jobs
published by a pod (those with a pod user), how many entries were added since the last look.
A job past a limit is cut off: its pod user is disabled and its connections closed, the
reason is recorded in its meta hash, and the next drain folds the cut-off into the state (the
row ends ``failed`` with the reason) and frees the backlog unread. Jobs published by trusted
processes (local training, ``replay``) are not limited (docs/decisions.md). The read is
filtered in Redis: only the jobs the check may act on come back to Python.

A running job whose last drained event is older than ``stall_after_s`` is reported stalled:
the pump records when, and the next drain folds it into the state (the row's error message
says so, its status stays); the report clears when events resume.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from producer.wire import as_text

from . import keys
from .acl import disable_pod_user
from .keys import MetaField
from .scripts import run_chunked
from .settings import Settings
from .state import RUNNING_STATUS

log = logging.getLogger(__name__)

USAGE_CHUNK_JOBS = 200  # jobs per call of lua/job_usage.lua
_USAGE_FIELDS = (
    MetaField.STATUS, MetaField.DRAINED_AT, MetaField.STALLED_SINCE, MetaField.CUT_OFF,
    MetaField.POD_USER,
)  # fmt: skip


@dataclass(frozen=True)
class Usage:
    """What one job's stream and meta say, as the limit check reads them."""

    job_id: str
    undrained: int
    stream_bytes: int
    entries_added: int
    status: str | None
    drained_at: float | None
    stalled_since: float | None
    cut_off: str | None
    pod_user: str | None
    state_bytes: int = 0


class LimitKeeper:
    """Checks every job's usage once per ``settings.limits_interval_s`` (the pump calls it).

    It keeps, per pod job, the last count of entries added, to measure events per second.
    """

    def __init__(self, redis: Any, settings: Settings) -> None:
        self.redis, self.settings = redis, settings
        self._last_check = 0.0
        # Per pod job: (monotonic time, entries added, tokens left in its bucket).
        self._seen: dict[str, tuple[float, int, float]] = {}

    def check(self, job_ids: list[str]) -> list[str]:
        """Cut off or report the jobs that need it; return the jobs to drain for that."""
        now = time.monotonic()
        if now - self._last_check < self.settings.limits_interval_s:
            return []
        self._last_check = now
        to_drain = []
        stall_before = time.time() - self.settings.stall_after_s
        for usage in read_usage(self.redis, job_ids, stall_before):
            if self._act(usage, now):
                to_drain.append(usage.job_id)
        live = set(job_ids)  # built once: per entry it made the pruning O(jobs²)
        self._seen = {j: v for j, v in self._seen.items() if j in live}
        return to_drain

    def _act(self, usage: Usage, now: float) -> bool:
        if usage.cut_off is not None:
            return usage.undrained > 0  # the drain frees the backlog
        reason = self._exceeded(usage, now)
        if reason is not None:
            cut_off_job(self.redis, usage.job_id, reason, usage.pod_user)
            return True
        return self._stalled(usage)

    def _exceeded(self, usage: Usage, now: float) -> str | None:
        s = self.settings
        if usage.pod_user is None:
            return None  # a trusted producer (local training, replay): not limited
        if usage.undrained > s.job_max_undrained_events:
            return f"{usage.undrained} events await the scorer (limit {s.job_max_undrained_events})"
        if usage.stream_bytes > s.job_max_undrained_bytes:
            return (
                f"{usage.stream_bytes} bytes await the scorer (limit {s.job_max_undrained_bytes})"
            )
        if usage.state_bytes > s.job_max_state_bytes:
            return f"its state holds {usage.state_bytes} bytes (limit {s.job_max_state_bytes})"
        return self._over_rate(usage, now)

    def _over_rate(self, usage: Usage, now: float) -> str | None:
        """A token bucket: ``job_burst_events`` deep, refilled at ``job_max_events_per_s``."""
        s = self.settings
        if usage.entries_added < 0:
            return None
        seen = self._seen.get(usage.job_id)
        if seen is None:  # first look: what the stream holds was published before, at any rate
            self._seen[usage.job_id] = (now, usage.entries_added, float(s.job_burst_events))
            return None
        then, added, tokens = seen
        tokens = min(s.job_burst_events, tokens + (now - then) * s.job_max_events_per_s)
        tokens -= usage.entries_added - added
        self._seen[usage.job_id] = (now, usage.entries_added, tokens)
        if tokens < 0:
            return (
                f"more than {s.job_burst_events} events in a burst or {s.job_max_events_per_s:g}"
                " events/s sustained from the pod"
            )
        return None

    def _stalled(self, usage: Usage) -> bool:
        if usage.status != RUNNING_STATUS or usage.drained_at is None or usage.undrained > 0:
            return False
        if usage.stalled_since is not None:
            return False
        if time.time() - usage.drained_at < self.settings.stall_after_s:
            return False
        self.redis.hset(keys.meta(usage.job_id), MetaField.STALLED_SINCE, repr(usage.drained_at))
        log.warning("job %s is silent since %.0f", usage.job_id, usage.drained_at)
        return True


def read_usage(redis: Any, job_ids: list[str], stall_before: float) -> list[Usage]:
    """Read the usage of the jobs among ``job_ids`` the check may act on.

    The filtering runs in Redis (``lua/job_usage.lua``, a script per chunk of jobs, one
    pipeline per node): a job comes back when it is cut off with a backlog, has a pod user
    (its limits and rate are checked on every look), or is a running job whose last drain was
    before ``stall_before`` (trusted time) and whose silence is not reported yet. The others,
    most of a busy fleet, cost the pump no Python time.
    """
    args = [*_USAGE_FIELDS, RUNNING_STATUS, repr(stall_before)]
    replies = run_chunked(
        redis, "job_usage", job_ids, _usage_keys, args, chunk_jobs=USAGE_CHUNK_JOBS
    )
    found = []
    for indexes, rows in replies:
        for index, undrained, size, added, status, drained, stalled, cut, pod, state in rows:
            found.append(
                Usage(
                    job_ids[indexes[index - 1]], int(undrained), int(size), int(added),
                    as_text(status) or None, _float(drained), _float(stalled),
                    as_text(cut) or None, as_text(pod) or None, int(state),
                )
            )  # fmt: skip
    return found


def _usage_keys(job_id: str) -> list[str]:
    return [keys.meta(job_id), keys.events(job_id), keys.state(job_id)]


def cut_off_job(redis: Any, job_id: str, reason: str, pod_user: str | None = None) -> None:
    """Cut a job off: disable its pod user, close its connections, record the reason.

    The user goes first, so nothing more arrives once the reason is recorded; the next drain
    folds the cut-off into the state and frees the backlog. ``redis`` is the data side: the
    user is disabled on every node (a node that does not answer is left to the pump's
    reconciliation, which disables the users of cut-off jobs).
    """
    if pod_user:
        disable_pod_user(redis, pod_user)
    cut_off = {MetaField.CUT_OFF: reason, MetaField.CUT_OFF_AT: repr(time.time())}
    redis.hset(keys.meta(job_id), mapping=cut_off)
    log.error("job %s cut off: %s", job_id, reason)


def _float(value: Any) -> float | None:
    text = as_text(value)
    return float(text) if text else None
