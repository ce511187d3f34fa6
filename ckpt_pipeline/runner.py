"""All in one process: the pump plus a ``scoring`` and a ``sink`` worker.

For the demo, the tests and small deployments.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from rq import Queue, SimpleWorker
from rq.exceptions import StopRequested

from scorer_worker.pump import Pump
from scorer_worker.routes import DRAIN, composed
from scorer_worker.settings import Settings
from sink.tasks import FLUSH

log = logging.getLogger(__name__)


def run_all_in_one(
    redis: Any,
    settings: Settings,
    *,
    burst: bool = False,
    stop: threading.Event | None = None,
    after_pass: Callable[[Callable[[str], bool]], object] | None = None,
    data: Any = None,
) -> int:
    """Alternate pump passes with burst runs of a worker on queues ``scoring`` and ``sink``.

    The worker is a ``SimpleWorker`` (no fork per task), which is what makes one process
    enough. With ``burst`` it returns once a pass finds nothing behind and both queues are
    empty. ``after_pass`` is handed to the :class:`Pump` (the command line composes the RunPod
    pod lifecycle into it, as in ``ckpt-pipeline pump``). ``redis`` is the queue side, ``data``
    the data side (``redis`` by default); the tasks open their own (``process_data``).

    Returns:
        The number of pump passes made.
    """
    stop = stop or threading.Event()
    pump = Pump(redis, settings, after_pass=after_pass, flush=FLUSH, data=data)
    queues = [Queue(DRAIN.queue, connection=redis), Queue(FLUSH.queue, connection=redis)]
    try:
        with composed(settings, FLUSH):  # the worker below runs its tasks in this process
            return _loop(pump, queues, redis, settings, burst, stop)
    except (StopRequested, KeyboardInterrupt):
        # The worker's SIGTERM/SIGINT handlers stay installed between bursts: a stop request
        # arriving while the pump sleeps lands here, between tasks, so it is a clean exit.
        return -1


def _loop(
    pump: Pump,
    queues: list[Queue],
    redis: Any,
    settings: Settings,
    burst: bool,
    stop: threading.Event,
) -> int:
    passes = 0
    _stop_on_signals(stop)
    while not stop.is_set():
        result = pump.run_once()
        passes += 1
        if all(q.count == 0 for q in queues):
            if result.idle and burst:
                return passes
            # Idle, or a task marker from a lost task still has to expire: wait a pass.
            stop.wait(settings.pump_interval_ms / 1000)
            continue
        worker = _BurstWorker(queues, connection=redis)
        worker.log.setLevel(logging.WARNING)
        worker.work(burst=True, logging_level="WARNING")
        # SIGTERM/SIGINT during a task (rq finished it) or while it waited (rq returned
        # quietly, without _stop_requested): stop either way.
        if worker._stop_requested or worker._shutdown_requested_date is not None:
            stop.set()
        _stop_on_signals(stop)  # the worker replaced our handlers with its own
    return passes


class _BurstWorker(SimpleWorker):
    """A ``SimpleWorker`` for one burst, without rq's command channel (pub/sub).

    Closing that channel waits up to a second per burst, during which the pump does not run;
    a worker in this process needs no remote commands.
    """

    def subscribe(self) -> None:
        """Skip rq's pub/sub command channel."""

    def unsubscribe(self) -> None:
        """Nothing to close."""


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
