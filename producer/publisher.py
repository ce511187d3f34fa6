"""EventPublisher: hands events from the training loop to Redis without ever blocking it.

``publish`` only appends to an in-memory queue. A daemon thread takes batches from the queue
and sends them with one pipelined round of XADD. While Redis is unreachable the thread
appends the batches to a local spool file instead, and once Redis answers again it delivers
the spool first, so events arrive in the order they were published. Delivery is at least
once; the scorer ignores duplicates.

A spool disk that refuses writes (any ``OSError``: full, quota, read-only, failing) stops
neither the thread nor training: the batch goes back to the front of the queue, for whichever
of Redis and the disk takes it first, in order. Memory stays within ``max_queue_events``: then
the *oldest* are dropped, as the newest are what a row shows (the step, the latest retained
checkpoints, the end). Drops count in ``dropped``, which an ``events_lost`` report
(``producer.wire``) sends ahead of the other events whenever it grew, and once more at close.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from typing import Any

from .clients import open_redis
from .events import Event, build_event, build_loss_report, encode_event
from .rare_log import RareLog
from .spool import Spool, default_spool_dir, spool_files
from .wire import (
    CHECKPOINT_SAVED,
    EVAL,
    EVENT_FIELD,
    INSTANCE_ID_HEX,
    TRAIN_BEGIN,
    TRAIN_END,
    stream_key,
)

log = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
URGENT_KINDS = (TRAIN_BEGIN, EVAL, CHECKPOINT_SAVED, TRAIN_END)


class EventPublisher:
    """Publishes one job's events to ``ckpt:{<job>}:events`` from a background thread.

    Args:
        job_id: the job; defaults to ``$JOB_ID``.
        redis_url: defaults to ``$REDIS_URL``, then ``redis://localhost:6379/0``; any node of
            a Redis Cluster will do (:func:`open_redis` finds the cluster).
        spool_dir: where undeliverable events wait; defaults to :func:`default_spool_dir`.
        max_queue_events: memory bound (queue and batch in flight): new events beyond it
            are refused, and while neither Redis nor the spool takes any, the oldest dropped.
        batch_max_events: events per pipelined XADD round.
        flush_interval_ms: how long the thread lets training logs gather before sending; the
            events users wait for (evals, checkpoints, begin and end) wake it at once.
        socket_timeout_s: Redis connect and read timeout, paid by the thread, never the caller.
        retry_max_s: longest wait between reconnection attempts while Redis is down.
        redis_client: an existing ``redis.Redis`` to use instead of ``redis_url``.

    Raises:
        ValueError: if no valid job id is given or found in the environment.
    """

    def __init__(
        self,
        job_id: str | None = None,
        redis_url: str | None = None,
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        max_queue_events: int = 100_000,
        batch_max_events: int = 500,
        flush_interval_ms: int = 1000,
        socket_timeout_s: float = 2.0,
        retry_max_s: float = 5.0,
        redis_client: Any = None,
    ) -> None:
        self.job_id = job_id or os.environ.get("JOB_ID", "")
        self.key = stream_key(self.job_id)
        # Producers publish to the data side: CKPT_DATA_REDIS_URL when the sides are split.
        self.redis_url = (
            redis_url
            or os.environ.get("CKPT_DATA_REDIS_URL")
            or os.environ.get("REDIS_URL")
            or DEFAULT_REDIS_URL
        )
        self.spool = Spool(spool_dir or default_spool_dir(), self.job_id, retry_max_s)
        self.max_queue_events = max_queue_events
        self.batch_max_events = batch_max_events
        self.flush_interval_s = flush_interval_ms / 1000
        self.socket_timeout_s = socket_timeout_s
        self.retry_max_s = retry_max_s
        self.sent = 0
        self.spooled = 0
        # Named in its reports, so that the losses of a restarted process add up.
        self.instance = secrets.token_hex(INSTANCE_ID_HEX // 2)
        self._refused = 0  # written by the caller's thread only (queue full, or closed)
        self._lost = 0  # written under _lock only (unbuildable, dropped from memory, at close)
        self._reported = 0  # ``dropped`` as of the last report that reached Redis
        self._client = redis_client
        self._injected_client = redis_client
        # Set by the thread when a send fails, cleared when one succeeds; read by anyone (a
        # stale read costs at most one skipped or one bounded wait of a follow_scorer callback).
        self._unreachable = False
        # Events, emit() arguments, or encoded events put back in front (when stuck, it is
        # trimmed to the hold limit, so that new events find room until the next round).
        self._queue: deque[Event | tuple | str] = deque()
        self._hold_limit = max_queue_events - min(batch_max_events, max_queue_events // 2)
        self._stuck = False  # the last round found no place at all
        self._redis_failed_at = 0.0  # monotonic time of the last failed send
        self._wake = threading.Event()
        # The batch being sent, so that close() can spool it if the thread hangs in a send.
        self._lock = threading.Lock()
        self._inflight: list[str] = []
        self._abandoned = False
        self._published = 0  # written by the caller's thread only
        self._handled = 0  # taken from the queue for good (sent, spooled or dropped)
        self._stopping = False
        self._next_attempt, self._backoff_s = 0.0, 0.1
        self._loss_log = RareLog(log)
        self._thread = threading.Thread(
            target=self._run, name=f"ckpt-publisher-{self.job_id}", daemon=True
        )
        self._thread.start()

    def publish(self, event: Event) -> bool:
        """Queue one event for delivery; never blocks and never raises.

        Returns:
            False when the event was dropped (queue full or publisher closed), else True.
        """
        return self._enqueue(event, event.get("kind"))

    def publish_waiting(self, event: Event, timeout_s: float = 60.0) -> bool:
        """Queue one event, waiting up to ``timeout_s`` while the queue is full.

        For back-fills (``ckpt-pipeline replay``), which must hand over every event and may
        wait for the thread; a training loop uses :meth:`publish`, which never waits.

        Returns:
            False when the event was dropped (still full after the timeout, publisher closed
            or its thread gone), else True.
        """
        deadline = time.monotonic() + timeout_s
        while self._in_memory() >= self.max_queue_events and not self._stopping:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                break
            self._wake.set()  # the queue is full: let the thread send a batch now
            time.sleep(0.001)
        return self.publish(event)

    def _in_memory(self) -> int:
        return len(self._queue) + len(self._inflight)

    def _enqueue(self, item: Event | tuple, kind: Any) -> bool:
        if self._stopping or self._in_memory() >= self.max_queue_events:
            self._refused += 1
            if self._refused == 1:
                log.warning("checkpoint events dropped: publisher closed or queue full")
            return False
        self._queue.append(item)
        self._published += 1
        # Waking the thread per train log would take the GIL from training every step.
        if kind in URGENT_KINDS or len(self._queue) >= self.batch_max_events:
            self._wake.set()
        return True

    def emit(
        self,
        kind: str,
        step: int,
        epoch: float | None = None,
        metrics: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> bool:
        """Queue an event for this job, timestamped now; never raises.

        The event is built (metrics converted, fields checked) by the publisher's thread: the
        training thread only copies the arguments and queues them. An event that cannot be
        built is logged and counted in ``dropped`` there.

        Returns:
            True when the event was queued.
        """
        metrics = dict(metrics) if metrics else None
        info = dict(info) if info else None
        return self._enqueue((kind, self.job_id, step, epoch, metrics, info, time.time()), kind)

    @property
    def dropped(self) -> int:
        """Events given and never to be delivered: refused (queue full, closed), not buildable,
        or dropped while neither Redis nor the spool took them (what the reports say)."""
        return self._refused + self._lost

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every event published before this call reached Redis or the spool.

        Dropped events count as handled (see ``dropped``). Once both Redis and the spool
        refused an attempt made after the call and the events stay in memory, it returns
        False rather than wait out its timeout (at most ``retry_max_s`` of backoff).

        Returns:
            True when they all did before the timeout.
        """
        target, called = self._published, time.monotonic()
        deadline = called + timeout_s
        while self._handled < target:
            if self._stuck and min(self._redis_failed_at, self.spool.refused_at) > called:
                return False  # held in memory: delivered when Redis or the disk come back
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            self._wake.set()
            time.sleep(0.002)
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop accepting events, deliver or spool what is queued, and stop the thread.

        Events the thread could not handle within ``timeout_s`` are written to the spool here,
        so nothing published before ``close`` is lost (if the disk refuses them, they count in
        ``dropped``). Then a last ``events_lost`` report, to Redis or else the spool.
        """
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        with self._lock:
            # If the thread hangs in a send, take over its batch and the queue, in order.
            self._abandoned = True
            leftover = [*self._inflight, *self._encode(list(self._queue))]
            self._queue.clear()
            self._inflight = []
            if leftover and not self._spool_events(leftover, force=True):
                self._lost += len(leftover)
                log.error(
                    "%d checkpoint events lost at close: the spool refused them", len(leftover)
                )
        # A thread still alive hangs in a send (or cannot send): do not wait on Redis again.
        self._report_losses(final=True, to_redis=not self._thread.is_alive())

    @property
    def redis_unreachable(self) -> bool:
        """True while Redis is unreachable: the last send failed and events go to the spool."""
        return self._unreachable

    @property
    def injected_client(self) -> Any:
        """The ``redis_client`` given to the constructor, or None when one is made from the URL."""
        return self._injected_client

    @property
    def pending_events(self) -> int:
        """Events still in memory (not yet in Redis or the spool)."""
        return len(self._queue)

    def _run(self) -> None:
        round_log = RareLog(log)
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            try:
                self._send_round()
            except Exception:  # the thread must survive anything; events stay queued or spooled
                round_log(logging.ERROR, "checkpoint publisher round failed", exc_info=True)
            if self._stopping and not self._queue:
                return

    def _send_round(self) -> None:
        self._stuck = False
        self._report_losses()
        if self.spool.readable_pending() and self._redis_ready():
            self._deliver_spool()
        while self._queue:
            with self._lock:
                if self._abandoned:
                    return
                count, batch = self._take_batch()
                self._inflight = batch
            sent = not self.spool.readable_pending() and self._redis_ready() and self._xadd(batch)
            with self._lock:
                self._inflight = []
                if self._abandoned:
                    return
                placed = sent or self._spool_events(batch)
                if not placed:  # neither Redis nor the disk: back in front, tried next round
                    self._queue.extendleft(reversed(batch))
                    count -= len(batch)  # what _encode dropped stays handled
                    self._bound_memory()
                    self._stuck = True
                self._handled += count
            if not placed:
                return
        if self._stopping and self.spool.readable_pending() and self._redis_ready():
            self._deliver_spool()

    def _bound_memory(self) -> None:
        # Under _lock: drop the oldest (see the module docstring), leaving room for new ones.
        excess = len(self._queue) - self._hold_limit
        if excess > 0:
            for _ in range(excess):
                self._queue.popleft()
            self._handled, self._lost = self._handled + excess, self._lost + excess
            self._loss_log(logging.WARNING, "%d checkpoint events dropped so far: Redis and the "
                           "spool %s refuse them", self.dropped, self.spool.path)  # fmt: skip

    def _report_losses(self, final: bool = False, to_redis: bool = True) -> None:
        # Cumulative, so a lost or repeated report costs nothing. ``final`` (close) ignores
        # the backoff, and spools the report if Redis does not take it.
        lost = self.dropped
        if lost <= self._reported or not (final or self._redis_ready()):
            return
        text = encode_event(build_loss_report(self.job_id, self.instance, lost))
        if to_redis and self._xadd([text], counted=False):
            self._reported = lost
        elif final and not self.spool.offer([text], force=True):
            log.error("%d checkpoint events lost, and the report of it too", lost)

    def _take_batch(self) -> tuple[int, list[str]]:
        batch = []
        while self._queue and len(batch) < self.batch_max_events:
            batch.append(self._queue.popleft())
        return len(batch), self._encode(batch)

    def _encode(self, items: list[Event | tuple | str]) -> list[str]:
        encoded = []
        for item in items:
            try:  # an emit()ted event is built here, off the training thread; a str was put back
                if not isinstance(item, str):
                    item = encode_event(item if isinstance(item, dict) else build_event(*item))
                encoded.append(item)
            except (TypeError, ValueError):
                self._lost += 1  # called under _lock
                log.exception("checkpoint event not buildable or encodable; dropped")
        return encoded

    def _spool_events(self, encoded: list[str], force: bool = False) -> bool:
        if not encoded or self.spool.offer(encoded, force):
            self.spooled += len(encoded)
            return True
        return False

    def _deliver_spool(self) -> None:
        while True:
            events, offset = self.spool.readable_batch(self.batch_max_events)
            if not events or not self._xadd(events):
                return
            self.spool.mark_delivered(offset)  # never raises: kept in memory on a full disk

    def _redis_ready(self) -> bool:
        return time.monotonic() >= self._next_attempt

    def _xadd(self, encoded: list[str], counted: bool = True) -> bool:
        if not encoded:
            return True
        try:
            pipe = self._redis().pipeline(transaction=False)
            for text in encoded:
                pipe.xadd(self.key, {EVENT_FIELD: text})
            pipe.execute()
        except Exception as exc:  # any Redis failure means: spool and retry later
            self._unreachable, self._redis_failed_at = True, time.monotonic()
            self._next_attempt = time.monotonic() + self._backoff_s
            log.warning(
                "redis unavailable (%s); spooling for %.1fs", type(exc).__name__, self._backoff_s
            )
            self._backoff_s = min(self._backoff_s * 2, self.retry_max_s)
            return False
        self._backoff_s, self._unreachable = 0.1, False
        if counted:  # a report is not one of the events
            self.sent += len(encoded)
        return True

    def _redis(self) -> Any:
        if self._client is None:
            timeout = self.socket_timeout_s
            self._client = open_redis(
                self.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        return self._client


def flush_spool_dir(
    directory: str | os.PathLike[str], redis_url: str, timeout_s: float = 60.0
) -> dict[str, int]:
    """Deliver the spool of every job found in ``directory`` (after a crashed training run).

    Returns:
        For each job, how many spool bytes are still undelivered (0 when all arrived).
    """
    results = {}
    for job_id, _ in spool_files(directory):
        publisher = EventPublisher(job_id, redis_url, spool_dir=directory, flush_interval_ms=1)
        publisher.close(timeout_s)
        results[job_id] = publisher.spool.undelivered_bytes()
    return results
