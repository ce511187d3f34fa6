"""The pump: a level-triggered reconciler that enqueues whatever is behind.

Each pass compares every active job's stream with its cursor (anything left in the stream
is undrained, because a drain trims what it committed) and the state's version with the
version the sink last wrote. A missed notification therefore only delays work, never loses
it. Only this trusted process (and the trusted workers) enqueue RQ tasks.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producer.wire import as_text, job_of_stream_key

from . import keys
from .coalescing import flush_due
from .dispatch import enqueue_many
from .levels import read_levels
from .limits import LimitKeeper
from .registry import drop_pod_user
from .routes import Route
from .scan import scan_levels
from .settings import Settings
from .store import compact_state
from .topology import scan_masters

log = logging.getLogger(__name__)
STREAM_PATTERN = "ckpt:{*}:events"


@dataclass
class PassResult:
    """What one pump pass saw and did."""

    jobs: int = 0
    behind_scoring: int = 0
    behind_sink: int = 0
    drains_enqueued: int = 0
    flushes_enqueued: int = 0
    retired: int = 0

    @property
    def idle(self) -> bool:
        """True when no job is behind."""
        return self.behind_scoring == 0 and self.behind_sink == 0


class Pump:
    """Reconciles streams, states and rows for the jobs of one shard.

    Args:
        redis: the queue side (trusted credentials): the job index, markers, RQ.
        settings: pump interval, discovery interval, marker TTLs.
        shard_index: which shard of the jobs this pump owns (0-based).
        shard_count: how many pumps share the jobs, by CRC32 of the job id.
        after_pass: called after each pass with :meth:`owns`, for work the application
            composes into the pump (the command line passes the RunPod pod lifecycle; the
            scorer itself knows nothing of it).
        flush: where rows that are due are sent (the sink's task, given by the shell); None
            enqueues no flushes.
        data: the data side (each job's keys); ``redis`` itself by default.
    """

    def __init__(
        self,
        redis: Any,
        settings: Settings,
        shard_index: int = 0,
        shard_count: int = 1,
        *,
        after_pass: Callable[[Callable[[str], bool]], object] | None = None,
        flush: Route | None = None,
        data: Any = None,
    ):
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard {shard_index} is not in 0..{shard_count - 1}")
        self.redis = redis
        self.data = data if data is not None else redis
        self.settings = settings
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.after_pass = after_pass
        self.flush = flush
        self.limits = LimitKeeper(self.data, settings)
        self._last_discovery = 0.0

    def owns(self, job_id: str) -> bool:
        """Return True when ``job_id`` belongs to this pump's shard."""
        return zlib.crc32(job_id.encode()) % self.shard_count == self.shard_index

    def run_once(self) -> PassResult:
        """Make one pass: discover streams, enqueue drains and flushes, retire finished jobs."""
        if time.monotonic() - self._last_discovery >= self.settings.discover_interval_s:
            self.discover()
        jobs = sorted(
            j for j in (as_text(m) for m in self.redis.smembers(keys.JOBS)) if self.owns(j)
        )
        result = PassResult(jobs=len(jobs))
        drains, eval_flushes, flushes, now = [], [], [], time.time()
        flush_queue = self.flush.queue if self.flush is not None else "sink"
        scan = scan_levels(self.data, jobs, flush_queue, queue=self.redis)  # jobs to act on
        result.behind_scoring, result.behind_sink = scan.behind_scoring, scan.behind_sink
        for work in scan.work:
            job_id, levels = work.job_id, work.levels
            if levels.undrained > 0 and not work.drain_queued:
                drains.append(job_id)
            if levels.sink_behind:  # a version refused for good is not retried
                due = flush_due(levels, now, self.settings.flush_min_interval_s)
                if due and not work.flush_queued:  # evaluations first: users wait for them
                    (eval_flushes if levels.eval_changed else flushes).append(job_id)
            elif levels.undrained == 0 and levels.finished:
                self._retire(job_id)
                result.retired += 1
        # Limits and silence: a cut-off or a stall report is folded in by a drain.
        drains += [j for j in self.limits.check(jobs) if j not in drains]
        settings = self.settings
        result.drains_enqueued = enqueue_many(
            self.redis, keys.SCORING_QUEUE, keys.DRAIN_JOBS_TASK, drains, settings
        )
        if self.flush is not None:
            result.flushes_enqueued = enqueue_many(
                self.redis, self.flush.queue, self.flush.task, eval_flushes + flushes, settings
            )
        if self.after_pass is not None:
            self.after_pass(self.owns)
        return result

    def run(self, stop: threading.Event | None = None) -> None:
        """Pass until ``stop`` is set, sleeping ``pump_interval_ms`` between passes.

        With thousands of jobs a pass itself takes a while: the pump then sleeps as long as
        its last pass took, so it never takes more than half a core from the workers.
        """
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            try:
                result = self.run_once()
            except Exception:  # a Redis outage must not kill the reconciler: retry next pass
                log.exception("pump pass failed; retrying")
                stop.wait(1.0)
                continue
            if result.drains_enqueued or result.flushes_enqueued:
                log.info("pump: %s", result)
            took_s = time.monotonic() - started
            stop.wait(max(self.settings.pump_interval_ms / 1000, took_s))

    def discover(self) -> int:
        """Add jobs whose streams hold events but which are not in ``ckpt:jobs``.

        Returns:
            How many jobs were added.
        """
        self._last_discovery = time.monotonic()
        known = {as_text(member) for member in self.redis.smembers(keys.JOBS)}
        candidates = []
        for key in scan_masters(self.data, STREAM_PATTERN, "stream"):
            job_id = job_of_stream_key(as_text(key))
            if job_id and job_id not in known and self.owns(job_id):
                candidates.append(job_id)
        levels = read_levels(self.data, candidates)  # one pipelined round trip, not one per key
        found = [j for j, level in zip(candidates, levels, strict=True) if level.undrained > 0]
        added = self.redis.sadd(keys.JOBS, *found) if found else 0
        if added:
            log.info("pump discovered %d unregistered job stream(s)", added)
        return int(added)

    def _retire(self, job_id: str) -> None:
        # Finished, drained and written: stop polling it, the pod's credentials go, and its
        # records are compacted.
        self.redis.srem(keys.JOBS, job_id)
        drop_pod_user(self.data, job_id)
        compact_state(self.data, job_id)
