"""What every benchmark group shares: figures, the run context, processes, events, waiting."""

from __future__ import annotations

import bisect
import contextlib
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from ckpt_pipeline.testing.local_redis import LocalRedis
from producer.events import build_event, encode_event
from producer.wire import EVENT_FIELD, stream_key
from scorer_worker import keys
from scorer_worker.store import stream_id_key

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
DEFAULT_WORKER_CLASS = "ckpt_pipeline.worker.PipelineWorker"


@dataclass
class Figure:
    """One measured figure, named as in issue 6, with its target.

    Attributes:
        name: the figure's name (the JSON key).
        value: the measurement; None when the benchmark failed.
        unit: for the table.
        op: ``<=`` or ``>=`` for a target, ``info`` for a figure shown for comparison.
        limit: the target's bound.
        note: how it was measured, in a few words.
        error: why there is no value.
        verdict: overrides the comparison with the bound (a target with two conditions).
    """

    name: str
    value: float | None
    unit: str = ""
    op: str = "info"
    limit: float | None = None
    note: str = ""
    error: str | None = None
    verdict: bool | None = None

    @property
    def met(self) -> bool | None:
        """True/False against the target; None for an information figure."""
        if self.verdict is not None:
            return self.verdict
        if self.op == "info" or self.limit is None:
            return None
        if self.value is None or (isinstance(self.value, float) and math.isnan(self.value)):
            return False
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit

    @property
    def target(self) -> str:
        """The target as text, e.g. ``<= 20``."""
        if self.op == "info" or self.limit is None:
            return "for comparison"
        return f"{self.op} {_number(self.limit)}"

    def as_dict(self) -> dict[str, Any]:
        """The figure as JSON-ready data."""
        return {
            "name": self.name,
            "value": _json_number(self.value),
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "note": self.note,
            "error": self.error,
        }


def _json_number(value: float | None) -> float | str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def fmt(value: float | None) -> str:
    """A figure's value for the table: 3 significant digits, thousands separated."""
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) or (abs(value) >= 100 and float(value).is_integer()):
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


# Fan-out is the figure that needs the scoring side to scale: two workers, one per core.
FANOUT_SCORING_WORKERS = 2


@dataclass
class Context:
    """One benchmark run: its mode, sizes, folder, processes and worker settings."""

    quick: bool
    workdir: Path
    worker_class: str = DEFAULT_WORKER_CLASS
    scoring_workers: int | None = None  # None: 1, and FANOUT_SCORING_WORKERS for fan-out
    sink_workers: int = 1
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    processes: list[subprocess.Popen] = field(default_factory=list)
    servers: list[Any] = field(default_factory=list)
    verbose: bool = True
    profile_dir: Path | None = None
    connection_class: str | None = None

    def log(self, message: str) -> None:
        """Progress on stderr (the table goes to stdout)."""
        if self.verbose:
            print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)

    def folder(self, name: str) -> Path:
        """A fresh folder under the run's working folder."""
        path = self.workdir / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None):
        """Start a process in its own session (so its children die with it); log to a file."""
        log_path = self.workdir / f"{name}.log"
        handle = open(log_path, "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            args,
            cwd=REPO,
            env=env if env is not None else os.environ.copy(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log_path = log_path  # type: ignore[attr-defined]
        process.log_handle = handle  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen, timeout_s: float = 5.0) -> None:
        """Stop one started process and its children: SIGTERM, then SIGKILL."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout_s)
        # The group may outlive its leader (an RQ work horse): kill what is left of it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        process.log_handle.close()  # type: ignore[attr-defined]
        if process in self.processes:
            self.processes.remove(process)

    def start_redis(self, name: str, **kwargs: Any) -> LocalRedis:
        """Start a private redis-server that is stopped at the end of the run whatever happens."""
        server = LocalRedis(self.folder(f"redis-{name}"), **kwargs)
        self.servers.append(server)
        return server.start()

    def stop_redis(self, server: LocalRedis) -> None:
        """Stop a server started with :meth:`start_redis`."""
        server.stop()
        if server in self.servers:
            self.servers.remove(server)

    def cleanup(self) -> None:
        """Stop every process and server this run started (also on failure)."""
        for process in list(self.processes):
            self.stop(process, timeout_s=2.0)
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                server.kill()
        self.servers.clear()

    def worker_settings(self) -> dict[str, Any]:
        """The worker settings of this run, as recorded in the outputs."""
        env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("CKPT_")}
        env.pop("CKPT_SINK", None)
        return {
            "worker_class": self.worker_class,
            "connection_class": self.connection_class or "redis.Redis",
            "scoring_workers": self.scoring_workers
            or f"1 (fanout: {FANOUT_SCORING_WORKERS}, one per core)",
            "sink_workers": self.sink_workers,
            "pump": "python -m ckpt_pipeline.cli pump (one, unsharded)",
            "ckpt_env": env or "defaults of scorer_worker/settings.py",
        }


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    if rank == low or ordered[high] == ordered[low]:
        return ordered[low]
    if math.isinf(ordered[high]):  # interpolating towards a never-committed event
        return math.inf
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


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


# ---------------------------------------------------------------------------------- events


class JobEvents:
    """Wire events of one synthetic training job, produced one at a time.

    The sequence: ``train_begin``, then one event per step: ``train_log`` at step s, except
    that every ``eval_every``-th step is an ``eval`` (its ``eval_loss`` encodes the eval's
    index: ``2 + k / 10000``), each followed by a ``checkpoint_saved`` when ``saves`` (the last
    ``retained`` checkpoints stay). ``end()`` gives the ``train_end``.
    """

    def __init__(
        self,
        job_id: str,
        *,
        eval_every: int = 10,
        saves: bool = False,
        retained: int = 3,
        max_steps: int = 1000,
        separate_evals: bool = False,
    ) -> None:
        self.job_id = job_id
        self.eval_every = eval_every
        self.saves = saves
        self.retained = retained
        self.max_steps = max_steps
        self.separate_evals = separate_evals
        self.step = 0
        self.evals = 0
        self.started = False
        self._pending: list[tuple[str, str]] = []

    def next(self) -> tuple[str, str]:
        """Return (kind, encoded event) of the next event."""
        if self._pending:
            return self._pending.pop(0)
        if not self.started:
            self.started = True
            info = {
                "max_steps": self.max_steps,
                "num_train_epochs": 10,
                "resumed_from_step": 0,
                "save_total_limit": self.retained,
                "output_dir": f"/runs/{self.job_id}",
            }
            return "train_begin", self._encode("train_begin", 0, info=info)
        self.step += 1
        step = self.step
        if self.eval_every and step % self.eval_every == 0:
            events = self._eval(step)
            if self.separate_evals:  # a train_log at this step too, the eval after it
                self._pending.extend(events)
                return "train_log", self._train_log(step)
            self._pending.extend(events[1:])
            return events[0]
        return "train_log", self._train_log(step)

    def end(self) -> tuple[str, str]:
        """The ``train_end`` of the job."""
        return "train_end", self._encode("train_end", self.step, info={"status": "completed"})

    def take(self, count: int, *, end: bool = False) -> list[str]:
        """The next ``count`` encoded events (the last one a ``train_end`` when ``end``)."""
        events = [self.next()[1] for _ in range(count - 1 if end else count)]
        if end:
            events.append(self.end()[1])
        return events

    def _train_log(self, step: int) -> str:
        loss = 3.0 * math.exp(-step / 400) + 0.5
        metrics = {"loss": loss, "learning_rate": 5e-4 * (1 - step / 2000), "grad_norm": 1.25}
        return self._encode("train_log", step, metrics=metrics)

    def _eval(self, step: int) -> list[tuple[str, str]]:
        self.evals += 1
        metrics = {
            "eval_loss": 2.0 + self.evals / 10000,
            "eval_runtime": 0.5,
            "eval_samples_per_second": 200.0,
        }
        events = [("eval", self._encode("eval", step, metrics=metrics))]
        if self.saves:
            first = max(1, self.evals - self.retained + 1)
            names = [f"checkpoint-{k * self.eval_every}" for k in range(first, self.evals + 1)]
            info = {"checkpoint": f"checkpoint-{step}", "retained": names}
            events.append(("checkpoint_saved", self._encode("checkpoint_saved", step, info=info)))
        return events

    def _encode(self, kind: str, step: int, metrics=None, info=None) -> str:
        epoch = step / 100
        return encode_event(build_event(kind, self.job_id, step, epoch, metrics, info))


def typical_job(job_id: str, train_logs: int = 1000, evals: int = 100) -> list[str]:
    """A finished typical job: train_begin, ``train_logs`` logs, ``evals`` evals each with a
    checkpoint save (3 retained), train_end."""
    every = max(1, train_logs // evals)
    job = JobEvents(job_id, eval_every=every, saves=True, separate_evals=True, max_steps=train_logs)
    events = [job.next()[1]]
    while job.step < train_logs or job._pending:
        events.append(job.next()[1])
    events.append(job.end()[1])
    return events


def xadd_all(
    client: redis.Redis, streams: list[tuple[str, list[str]]], chunk: int = 1000
) -> list[list[bytes]]:
    """XADD the events of several jobs, interleaved by job, in pipelined chunks.

    Returns:
        Per job, the entry ids in order.
    """
    ids: list[list[bytes]] = [[] for _ in streams]
    cursors = [0] * len(streams)
    keys_ = [stream_key(job) for job, _ in streams]
    pipe = client.pipeline(transaction=False)
    pending: list[int] = []
    remaining = sum(len(events) for _, events in streams)
    while remaining:
        for index, (_, events) in enumerate(streams):
            if cursors[index] < len(events):
                pipe.xadd(keys_[index], {EVENT_FIELD: events[cursors[index]]})
                pending.append(index)
                cursors[index] += 1
                remaining -= 1
                if len(pending) >= chunk:
                    for job_index, entry_id in zip(pending, pipe.execute(), strict=True):
                        ids[job_index].append(entry_id)
                    pending = []
    if pending:
        for job_index, entry_id in zip(pending, pipe.execute(), strict=True):
            ids[job_index].append(entry_id)
    return ids


def entry_seconds(entry_id: bytes | str) -> float:
    """The server time (unix seconds) at which a stream entry was added, from its id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0]) / 1000


# ------------------------------------------------------------------------------ pipeline


class Pipeline:
    """A private Redis, a SQLite sink, and the pipeline's processes, for one benchmark.

    Args:
        ctx: the run.
        name: names the folder and the log files.
        scoring: ``rq worker scoring`` processes (0 for none).
        sink: ``rq worker sink`` processes.
        pump: start ``python -m ckpt_pipeline.cli pump``.
        sink_url: a sink URL instead of a new SQLite file.
        redis_args: more redis-server arguments.
        env: more environment for the processes.
    """

    def __init__(
        self,
        ctx: Context,
        name: str,
        *,
        scoring: int | None = None,
        sink: int | None = None,
        pump: bool = True,
        sink_url: str | None = None,
        redis_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = name
        self.scoring = (ctx.scoring_workers or 1) if scoring is None else scoring
        self.sink = ctx.sink_workers if sink is None else sink
        self.pump = pump
        self.folder = ctx.folder(name)
        self.db_path = self.folder / "jobs.db"
        self.sink_url = sink_url or f"sqlite:///{self.db_path}"
        self.redis_args = redis_args or []
        self.extra_env = env or {}
        self.server: LocalRedis | None = None
        self.client: redis.Redis | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.profilers: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment of the pipeline's processes."""
        assert self.server is not None
        return {
            **os.environ,
            "REDIS_URL": self.server.url,
            "CKPT_SINK": self.sink_url,
            "CKPT_SPOOL_DIR": str(self.folder / "spool"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **self.extra_env,
        }

    def __enter__(self) -> Pipeline:
        self.server = self.ctx.start_redis(self.name, extra_args=self.redis_args)
        self.client = redis.Redis.from_url(self.server.url)
        if self.sink_url.startswith("sqlite:///"):
            ensure_sqlite_schema(self.db_path)
        return self

    def start_processes(self, *, wait: bool = True) -> None:
        """Start the pump and the workers; wait until the workers are registered."""
        for index in range(self.scoring):
            self._start_worker("scoring", index)
        for index in range(self.sink):
            self._start_worker("sink", index)
        if self.pump:
            self.start_pump()
        if wait:
            expected = self.scoring + self.sink
            wait_until(self._workers_ready(expected), 30, 0.05, f"{expected} rq workers")
        if self.ctx.profile_dir is not None:
            self._start_profilers()

    def _start_profilers(self) -> None:
        """Sample every pipeline process with py-spy (samples holding the GIL: Python CPU time)."""
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            self.ctx.log("  --profile: py-spy not found (pip install py-spy); not profiling")
            return
        self.ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        for name, process in self.processes.items():
            output = self.ctx.profile_dir / f"{self.name}-{name}.txt"
            args = [
                py_spy, "record", "--pid", str(process.pid), "--rate", "250", "--format", "raw",
                "--function", "--subprocesses", "--gil", "--output", str(output),
            ]  # fmt: skip
            self.profilers.append(self.ctx.spawn(args, f"{self.name}-{name}-py-spy"))

    def stop_profilers(self) -> None:
        """Stop py-spy (SIGINT makes it write its output)."""
        for profiler in self.profilers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(profiler.pid, signal.SIGINT)
        for profiler in self.profilers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.wait(15)
            self.ctx.stop(profiler)
        self.profilers.clear()

    def start_pump(self) -> subprocess.Popen:
        """Start ``python -m ckpt_pipeline.cli pump``."""
        args = [sys.executable, "-m", "ckpt_pipeline.cli", "pump"]
        process = self.ctx.spawn(args, f"{self.name}-pump", self.env)
        self.processes["pump"] = process
        return process

    def _start_worker(self, queue: str, index: int) -> None:
        rq = shutil.which("rq", path=os.path.dirname(sys.executable)) or shutil.which("rq") or "rq"
        args = [
            rq, "worker", queue, "--url", self.server.url, "--worker-class", self.ctx.worker_class,
            "--logging_level", "WARNING", "--name", f"bench-{self.name}-{queue}-{index}",
        ]  # fmt: skip
        if self.ctx.connection_class:
            args += ["--connection-class", self.ctx.connection_class]
        self.processes[f"{queue}-{index}"] = self.ctx.spawn(
            args, f"{self.name}-{queue}-{index}", self.env
        )

    def _workers_ready(self, expected: int) -> Callable[[], bool]:
        def ready() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    tail = Path(process.log_path).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{name} exited ({process.returncode}): {tail}")
            return self.client.scard("rq:workers") >= expected

        return ready

    def worker_stats(self, seconds: float) -> dict[str, Any]:
        """Per rq worker: tasks done, tasks per second over ``seconds``, and the time rq
        measured inside the task functions versus the wall time per task."""
        stats = {}
        for name in self.processes:
            if name == "pump":
                continue
            data = self.client.hgetall(f"rq:worker:bench-{self.name}-{name}")
            done = int(data.get(b"successful_job_count") or 0)
            working = float(data.get(b"total_working_time") or 0.0)
            stats[name] = {
                "tasks": done,
                "tasks_per_s": round(done / seconds, 1),
                "ms_in_task_function_per_task": round(1000 * working / done, 2) if done else None,
                "ms_wall_per_task_idle_included": round(1000 * seconds / done, 2) if done else None,
            }
        return stats

    def check_alive(self) -> None:
        """Raise if a pipeline process died."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = Path(process.log_path).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited ({process.returncode}): {tail}")

    def register(self, job_ids: list[str]) -> None:
        """Create the jobs' pending rows (SQLite) and register them as the platform would."""
        if self.sink_url.startswith("sqlite:///"):
            create_sqlite_rows(self.db_path, job_ids)
        from scorer_worker.registry import register_job

        for job_id in job_ids:
            register_job(self.client, job_id, TOKEN)

    def levels(self, job_ids: list[str]) -> list[tuple[str | None, int, int, str | None]]:
        """Per job: (committed cursor, version, written version, status)."""
        pipe = self.client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.meta(job_id), "cursor", "version", "written_version", "status")
        out = []
        for cursor, version, written, status in pipe.execute():
            out.append((
                cursor.decode() if cursor else None,
                int(version or 0),
                int(written or 0),
                status.decode() if status else None,
            ))  # fmt: skip
        return out

    def caught_up(self, last_ids: dict[str, str], written: bool = True) -> bool:
        """True when every job's cursor reached its last entry (and the row is written)."""
        self.check_alive()
        jobs = list(last_ids)
        for job_id, (cursor, version, written_version, _) in zip(
            jobs, self.levels(jobs), strict=True
        ):
            if cursor is None or stream_id_key(cursor) < stream_id_key(last_ids[job_id]):
                return False
            if written and written_version < version:
                return False
        return True

    def __exit__(self, *exc_info: object) -> None:
        self.stop_profilers()
        for process in list(self.processes.values()):
            self.ctx.stop(process, timeout_s=3.0)
        self.processes.clear()
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.ctx.stop_redis(self.server)


def ensure_sqlite_schema(path: Path) -> None:
    """Create the SQLite sink's tables as the sink would."""
    from sink.writers.sqlite import SqliteWriter

    SqliteWriter(path).ensure_schema()


def create_sqlite_rows(path: Path, job_ids: list[str]) -> None:
    """Insert the ``pending`` rows the platform creates, in one transaction."""
    now = datetime.now(UTC).isoformat()
    with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
        conn.executemany(
            "INSERT OR IGNORE INTO local_training_jobs (id, job_token, model_name, created_at, "
            "status) VALUES (?, ?, 'bench', ?, 'pending')",
            [(job_id, TOKEN, now) for job_id in job_ids],
        )


@contextlib.contextmanager
def sqlite_reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the sink's file (WAL: it never blocks the writer)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def process_tree_rss(pid: int) -> int:
    """RSS in bytes of a process and its children."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = root.memory_info().rss
        for child in root.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0


def start_loadgen(ctx: Context, pipeline: Pipeline, name: str, **config: Any):
    """Start ``python -m benchmarks.loadgen`` against the pipeline's Redis.

    Returns:
        The process and the path its summary will be written to.
    """
    import json

    output = pipeline.folder / f"{name}.json"
    config_path = pipeline.folder / f"{name}-config.json"
    config_path.write_text(
        json.dumps({"url": pipeline.server.url, "output": str(output), **config})
    )
    args = [sys.executable, "-m", "benchmarks.loadgen", str(config_path)]
    return ctx.spawn(args, f"{pipeline.name}-{name}", pipeline.env), output


def finish_loadgen(ctx: Context, process: subprocess.Popen, output: Path, timeout_s: float) -> dict:
    """Wait for a load generator to end and return its summary.

    Raises:
        RuntimeError: it failed or did not end in time (it is killed then).
    """
    import json

    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        ctx.stop(process)
        raise RuntimeError(f"load generator still running after {timeout_s:.0f}s") from None
    code = process.returncode
    ctx.stop(process)
    if code != 0:
        tail = Path(process.log_path).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"load generator failed ({code}): {tail}")
    return json.loads(output.read_text())


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
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("keyspace subscription did not start")

    def stop(self) -> None:
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
