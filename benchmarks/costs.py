"""Per-job costs of the three kinds of work, timed in this process, on each data side.

For the ``cluster`` group (and the scaling plan, docs/scaling.md): 500 registered jobs per
variant (one task's worth, ``CKPT_DISPATCH_BATCH_JOBS``), and in each round one new
``train_log`` per job, then

- the scoring worker's work: ``drain_many`` over the 500 jobs (one task's pipelined drain);
- the pump's work: one ``Pump.run_once`` pass over the registered jobs (the job index and
  the queued markers on a queue-side server of its own, the level scan on the data side;
  every job then has a version its row lacks, so each is returned to Python, as under load);
- the sink's work (``single`` and ``cluster`` only: ``WAIT`` is the scorer's): ``flush_job``
  of each job to a SQLite file, as one ``rq worker sink`` task does.

:func:`shard_pass_ms` times one pump shard's pass over an index of 100,000 jobs (the plan's
size), what the pump's O(jobs) index read costs each shard.

The variants alternate, their order reversed every other round, so that a machine whose
load drifts (other work shares its 2 cores) slows each variant alike; the figures are the
medians over the rounds of the time per job. Beside each wall time, the CPU time it cost is
split: this process (the worker's share: Python, redis-py), the data side's masters and its
replicas (``redis-server`` processes, by their pids). CPU time is what more machines add;
the wall time on 2 shared cores also holds the waits for a core.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import redis
from redis.cluster import RedisCluster

from ckpt_pipeline.testing.events import JobEvents
from ckpt_pipeline.testing.jobs import Job, ensure_sqlite_schema, setup_jobs
from producer.wire import EVENT_FIELD, stream_key
from scorer_worker.bulk import drain_many
from scorer_worker.pump import Pump
from scorer_worker.settings import Settings

from .common import TOKEN, Context

FLUSHED = ("single", "cluster")


def measure_costs(
    ctx: Context,
    sides: dict[str, tuple[str, dict[str, int]]],
    envs: dict[str, dict[str, str]],
    *,
    jobs: int = 500,
    rounds: int = 10,
) -> dict[str, dict[str, float]]:
    """Time drains, pump passes and flushes per job on each variant's data side.

    Args:
        ctx: the run (its folder holds the queue-side server and the SQLite files).
        sides: each variant's data side (a server, or a cluster node: detected) and its
            servers' pids by name (``...master...`` or ``...replica...``).
        envs: each variant's ``CKPT_*`` settings (``CKPT_DATA_WAIT_REPLICAS``).
        jobs: jobs per variant.
        rounds: rounds of one event per job.

    Returns:
        Per variant, in µs per job: ``drain_us_per_job``, ``pump_pass_us_per_job`` and, for
        the variants the sink is timed on, ``flush_us_per_job`` (wall time, the median over
        the rounds); the same with ``_cpu_us_per_job`` (this process),
        ``_masters_cpu_us_per_job`` and ``_replicas_cpu_us_per_job`` (the data side), each
        the total over the rounds per job.
    """
    queue_server = ctx.start_redis("cluster-costs-queue")
    queue = redis.Redis.from_url(queue_server.url)
    folder = ctx.folder("cluster-costs")
    variants = {}
    try:
        for variant, (url, pids) in sides.items():
            variants[variant] = _Variant(variant, url, envs[variant], queue, folder, jobs)
            variants[variant].servers = _servers(pids)
        times: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
        for index in range(rounds):
            order = list(variants) if index % 2 == 0 else list(reversed(variants))
            for variant in order:
                for what, seconds in variants[variant].round().items():
                    times[variant].setdefault(what, []).append(1e6 * seconds / jobs)
        # Wall times: medians. CPU times (read in clock ticks of 10 ms): the totals.
        return {
            variant: {
                f"{what}_us_per_job": round(
                    sum(values) / len(values) if what.endswith("_cpu")
                    else statistics.median(values), 1,
                )
                for what, values in found.items()
            }
            for variant, found in times.items()
        }  # fmt: skip
    finally:
        for variant in variants.values():
            variant.close()
        queue.close()
        ctx.stop_redis(queue_server)


class _Variant:
    """One variant's jobs, clients, settings and SQLite sink."""

    def __init__(
        self, name: str, url: str, env: dict[str, str], queue: redis.Redis, folder: Path,
        count: int,
    ) -> None:  # fmt: skip
        self.name = name
        self.data: Any = _data_client(url)
        self.queue = queue
        db = folder / f"{name}.db"
        ensure_sqlite_schema(db)
        self.settings = Settings(
            redis_url="redis://unused", data_redis_url=url, sink_url=f"sqlite:///{db}",
            data_wait_replicas=int(env.get("CKPT_DATA_WAIT_REPLICAS", 0)),
            flush_min_interval_s=0.0,  # each round's write is timed, not the coalescing
        )  # fmt: skip
        self.jobs = [f"cost-{name}-{i:04d}" for i in range(count)]
        setup_jobs(
            self.settings.sink_url, queue, [Job(job, TOKEN) for job in self.jobs],
            model_name="bench", data=self.data,
        )  # fmt: skip
        self.events = [JobEvents(job, eval_every=0) for job in self.jobs]
        self.pump = Pump(queue, self.settings, data=self.data)
        # The queue side holds every variant's jobs: this pump's shard is this variant's.
        self.pump.owns = set(self.jobs).__contains__  # type: ignore[method-assign]
        self.writer = None
        if name in FLUSHED:
            from sink.writers.sqlite import SqliteWriter

            self.writer = SqliteWriter(db)
        self.servers: dict[str, list[psutil.Process]] = {}
        self.pump.run_once()  # discovery and script loading, outside the timings

    def round(self) -> dict[str, float]:
        """Publish one event per job, then time a drain, a pump pass and the flushes.

        Returns:
            Seconds per kind of work: ``drain``, ``pump_pass``, ``flush``, each also as
            ``..._cpu``, ``..._masters_cpu`` and ``..._replicas_cpu``.
        """
        pipe = self.data.pipeline(transaction=False)
        for job, events in zip(self.jobs, self.events, strict=True):
            pipe.xadd(stream_key(job), {EVENT_FIELD: events.next()[1]})
        pipe.execute()
        took: dict[str, float] = {}
        with self._timed("drain", took):
            result = drain_many(self.data, self.jobs, self.settings, time.monotonic() + 60)
        if result.left or result.failed:
            raise RuntimeError(f"{self.name}: drain left {len(result.left)} job(s)")
        with self._timed("pump_pass", took):
            self.pump.run_once()
        if self.writer is not None:
            from sink.flush import flush_job

            with self._timed("flush", took):
                for job in self.jobs:
                    flush_job(self.data, job, self.settings, self.writer)
        return took

    @contextlib.contextmanager
    def _timed(self, what: str, took: dict[str, float]) -> Iterator[None]:
        """Record the wall time, this process's CPU and the data servers' CPU of a block."""
        servers = {role: _cpu(procs) for role, procs in self.servers.items()}
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        took[what] = time.perf_counter() - wall
        took[f"{what}_cpu"] = time.process_time() - cpu
        for role, procs in self.servers.items():
            took[f"{what}_{role}_cpu"] = _cpu(procs) - servers[role]

    def close(self) -> None:
        """Disconnect from the data side and close the SQLite writer."""
        if self.writer is not None:
            self.writer.close()
        self.data.close()


def _servers(pids: dict[str, int]) -> dict[str, list[psutil.Process]]:
    """The data side's server processes, as ``masters`` and ``replicas``."""
    found: dict[str, list[psutil.Process]] = {"masters": [], "replicas": []}
    for name, pid in pids.items():
        found["replicas" if "replica" in name else "masters"].append(psutil.Process(pid))
    return found


def _cpu(processes: list[psutil.Process]) -> float:
    """User plus system CPU seconds of the processes so far."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def shard_pass_ms(
    ctx: Context, data_url: str, *, total: int, shards: int, passes: int = 5
) -> dict[str, float]:
    """Time one pump shard's pass when the job index holds ``total`` jobs.

    ``total`` ids are added to ``ckpt:jobs`` on a fresh queue-side server (none of them
    registered on the data side: idle jobs, their levels all zero), and the pump of shard
    ``0/shards`` makes ``passes`` passes: it reads the whole index, keeps its shard's ids
    (CRC32) and scans those on the data side.

    Returns:
        The median pass in ms, the median ms of reading and filtering the index alone, the
        queue-side server's time per index read (``SMEMBERS``), and the shard's jobs.
    """
    from scorer_worker import keys

    server = ctx.start_redis("cluster-shard-queue")
    queue = redis.Redis.from_url(server.url)
    data: Any = _data_client(data_url)
    try:
        ids = [f"shard-{i:06d}" for i in range(total)]
        for start in range(0, total, 10_000):
            queue.sadd(keys.JOBS, *ids[start : start + 10_000])
        settings = Settings(redis_url=server.url, data_redis_url=data_url)
        pump = Pump(queue, settings, shard_index=0, shard_count=shards, data=data)
        pump.run_once()  # discovery and script loading, outside the timings
        passes_ms, index_ms = [], []
        for _ in range(passes):
            started = time.perf_counter()
            pump.run_once()
            passes_ms.append(1000 * (time.perf_counter() - started))
            started = time.perf_counter()
            owned = sorted(
                j for j in (m.decode() for m in queue.smembers(keys.JOBS)) if pump.owns(j)
            )
            index_ms.append(1000 * (time.perf_counter() - started))
        smembers = queue.info("commandstats").get("cmdstat_smembers", {})
        return {
            "pass_ms": round(statistics.median(passes_ms), 1),
            "index_read_and_filter_ms": round(statistics.median(index_ms), 1),
            "queue_server_us_per_index_read": round(float(smembers.get("usec_per_call", 0)), 1),
            "shard_jobs": len(owned),
        }
    finally:
        data.close()
        queue.close()
        ctx.stop_redis(server)


def _data_client(url: str) -> Any:
    """A client of the data side at ``url``: a cluster client for a cluster-mode node."""
    probe = redis.Redis.from_url(url)
    clustered = bool(probe.info("cluster").get("cluster_enabled"))
    probe.close()
    return RedisCluster.from_url(url) if clustered else redis.Redis.from_url(url)
