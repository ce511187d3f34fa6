"""What a benchmark watches in Redis while the pipeline runs: commits, and commands.

:class:`CommitWatcher` records when sampled jobs' committed cursors move (keyspace
notifications: the server runs with ``--notify-keyspace-events KA``), so a lag from XADD to
commit can be read per event; :func:`command_stats` and :func:`command_delta` count the
Redis commands a piece of work cost.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

import redis

from ckpt_pipeline.testing.convergence import entry_seconds
from scorer_worker import keys
from scorer_worker.streams import stream_id_key


class CommitWatcher:
    """Records, for a sample of jobs, when their committed cursor moved (keyspace events)."""

    def __init__(self, url: str, jobs: list[str]) -> None:
        self.client = redis.Redis.from_url(url)
        self.reader = redis.Redis.from_url(url)
        self.jobs = jobs
        self.commits: dict[str, list[tuple[float, tuple[int, int]]]] = {job: [] for job in jobs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="commit-watcher", daemon=True)
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start(self) -> None:
        """Subscribe and start recording; return once the subscription is in place.

        Raises:
            RuntimeError: the subscription did not start within 10 s.
        """
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("keyspace subscription did not start")

    def stop(self) -> None:
        """Stop recording and disconnect (what was recorded stays readable)."""
        self._stop.set()
        self._thread.join(5)
        self.client.close()
        self.reader.close()

    def _run(self) -> None:
        try:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            channels = {}
            for job in self.jobs:
                for key in (keys.state(job), keys.meta(job)):
                    channels[f"__keyspace@0__:{key}"] = job
            names = list(channels)
            for index in range(0, len(names), 500):
                pubsub.subscribe(*names[index : index + 500])
            self._ready.set()
            while not self._stop.is_set():
                touched = set()
                message = pubsub.get_message(timeout=0.05)
                while message is not None:
                    channel = message["channel"].decode()
                    touched.add(channels[channel])
                    message = pubsub.get_message(timeout=0)
                if touched:
                    self._read_cursors(sorted(touched))
            pubsub.close()
        except BaseException as exc:  # reported by the figures (events count as late)
            self.error = exc
            self._ready.set()

    def _read_cursors(self, jobs: list[str]) -> None:
        pipe = self.reader.pipeline(transaction=False)
        for job in jobs:
            pipe.hget(keys.meta(job), "cursor")
        cursors = pipe.execute()
        seen = time.time()
        for job, cursor in zip(jobs, cursors, strict=True):
            if cursor:
                position = stream_id_key(cursor)
                history = self.commits[job]
                if not history or position > history[-1][1]:
                    history.append((seen, position))

    def reached(self, last: dict[str, str]) -> bool:
        """True when every sampled job's committed cursor reached the given entry ids."""
        for job, entry_id in last.items():
            history = self.commits.get(job)
            if not history or history[-1][1] < stream_id_key(entry_id):
                return False
        return True

    def lags(self, records: dict[str, list]) -> list[float]:
        """Seconds from XADD to commit for every recorded event (inf if never committed)."""
        lags = []
        for job, events in records.items():
            history = self.commits.get(job, [])
            positions = [position for _, position in history]
            for _kind, _step, entry_id in events:
                index = bisect.bisect_left(positions, stream_id_key(entry_id))
                if index == len(history):
                    lags.append(float("inf"))
                else:
                    lags.append(max(0.0, history[index][0] - entry_seconds(entry_id)))
        return lags


def command_stats(client: redis.Redis) -> dict[str, int]:
    """Calls per Redis command since the server started (``INFO commandstats``)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def command_delta(before: dict[str, int], after: dict[str, int], per: float) -> dict[str, Any]:
    """Commands run between two ``command_stats`` readings, in total and per unit of work."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta = {name: calls for name, calls in delta.items() if calls > 0}
    top = sorted(delta.items(), key=lambda item: -item[1])[:10]
    return {
        "commands_per_event": round(sum(delta.values()) / per, 1),
        "top_commands_per_event": {name: round(calls / per, 2) for name, calls in top},
    }
