"""What a benchmark watches in Redis while the pipeline runs: commits, and commands.

:class:`CommitWatcher` records when sampled jobs' committed cursors move (keyspace
notifications: the data side's servers run with ``--notify-keyspace-events KA``), so a lag
from XADD to commit can be read per event; :func:`command_stats` and :func:`command_delta`
count the Redis commands a piece of work cost.

On a Redis Cluster a keyspace notification is published only on the node that holds the
key, so the watcher subscribes on each master to the channels of the keys that master holds
(one thread per master), and reads the cursors from that master directly.
"""

from __future__ import annotations

import bisect
import threading
import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from ckpt_pipeline.testing.convergence import entry_seconds
from scorer_worker import keys
from scorer_worker.streams import stream_id_key
from scorer_worker.topology import cluster_enabled


class CommitWatcher:
    """Records, for a sample of jobs, when their committed cursor moved (keyspace events).

    Args:
        url: the data side: a plain server, or any node of a Redis Cluster (detected).
        jobs: the jobs to watch.
    """

    def __init__(self, url: str, jobs: list[str]) -> None:
        self.jobs = jobs
        self.commits: dict[str, list[tuple[float, tuple[int, int]]]] = {job: [] for job in jobs}
        # Row writes seen per job: how often its ``written_version`` moved.
        self.row_writes: dict[str, int] = dict.fromkeys(jobs, 0)
        self._written: dict[str, bytes | None] = {}  # as last read (the first: the baseline)
        self._stop = threading.Event()
        self._clients: list[redis.Redis] = []
        self._threads: list[threading.Thread] = []
        self._ready: list[threading.Event] = []
        self.error: BaseException | None = None
        for index, (node_url, node_jobs) in enumerate(sorted(_jobs_by_node(url, jobs).items())):
            ready = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(node_url, node_jobs, ready),
                name=f"commit-watcher-{index}", daemon=True,
            )  # fmt: skip
            self._threads.append(thread)
            self._ready.append(ready)

    def start(self) -> None:
        """Subscribe and start recording; return once every subscription is in place.

        Raises:
            RuntimeError: a subscription did not start within 10 s.
        """
        for thread in self._threads:
            thread.start()
        deadline = time.monotonic() + 10
        for ready in self._ready:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("keyspace subscription did not start")
        if self.error is not None:
            raise RuntimeError(f"keyspace subscription failed: {self.error!r}")

    def stop(self) -> None:
        """Stop recording and disconnect (what was recorded stays readable)."""
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(5)
        for client in self._clients:
            client.close()

    def _run(self, url: str, jobs: list[str], ready: threading.Event) -> None:
        try:
            subscriber, reader = redis.Redis.from_url(url), redis.Redis.from_url(url)
            self._clients += [subscriber, reader]
            pubsub = subscriber.pubsub(ignore_subscribe_messages=True)
            channels = {}
            for job in jobs:
                for key in (keys.state(job), keys.meta(job)):
                    channels[f"__keyspace@0__:{key}"] = job
            names = list(channels)
            for index in range(0, len(names), 500):
                pubsub.subscribe(*names[index : index + 500])
            self._read_cursors(reader, jobs)  # the baseline of the row writes
            ready.set()
            while not self._stop.is_set():
                touched = set()
                message = pubsub.get_message(timeout=0.05)
                while message is not None:
                    channel = message["channel"].decode()
                    touched.add(channels[channel])
                    message = pubsub.get_message(timeout=0)
                if touched:
                    self._read_cursors(reader, sorted(touched))
            pubsub.close()
        except BaseException as exc:  # reported by the figures (events count as late)
            self.error = exc
            ready.set()

    def _read_cursors(self, reader: redis.Redis, jobs: list[str]) -> None:
        pipe = reader.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(keys.meta(job), "cursor", "written_version")
        replies = pipe.execute()
        seen = time.time()
        for job, (cursor, written) in zip(jobs, replies, strict=True):
            if job in self._written and written != self._written[job]:
                self.row_writes[job] += 1
            self._written[job] = written
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


def command_stats(clients: Any) -> dict[str, int]:
    """Calls per Redis command since the servers started (``INFO commandstats``), summed
    over ``clients`` (a client, or a list of clients of distinct servers)."""
    totals: dict[str, int] = {}
    for client in clients if isinstance(clients, list | tuple) else [clients]:
        for name, value in client.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            totals[command] = totals.get(command, 0) + int(value["calls"])
    return totals


def command_delta(before: dict[str, int], after: dict[str, int], per: float) -> dict[str, Any]:
    """Commands run between two ``command_stats`` readings, in total and per unit of work."""
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta = {name: calls for name, calls in delta.items() if calls > 0}
    top = sorted(delta.items(), key=lambda item: -item[1])[:10]
    return {
        "commands_per_event": round(sum(delta.values()) / per, 1),
        "top_commands_per_event": {name: round(calls / per, 2) for name, calls in top},
    }


def _jobs_by_node(url: str, jobs: list[str]) -> dict[str, list[str]]:
    """The jobs by the URL of the server that holds their keys: ``url`` itself for a plain
    server, each job's master for a cluster node."""
    if not cluster_enabled(url):
        return {url: list(jobs)}
    cluster = RedisCluster.from_url(url)
    try:
        found: dict[str, list[str]] = {}
        for job in jobs:
            node = cluster.get_node_from_key(keys.meta(job))
            found.setdefault(f"redis://{node.host}:{node.port}/0", []).append(job)
        return found
    finally:
        cluster.close()
