"""The pipeline a benchmark measures: the shared harness's, with a benchmark's defaults.

:class:`BenchPipeline` is ``ckpt_pipeline.testing.pipeline.Pipeline`` with a private
``redis-server`` and a SQLite sink in the group's folder, the run's worker counts and class
overrides, the shell's ``CKPT_*`` settings passed on (an operator tunes a run from the
shell; ``worker_settings`` records them), py-spy profilers for ``--profile``, per-worker
task figures and per-process CPU time. The data side may be another server or a Redis
Cluster (``data_url``), which the caller starts and stops. It is stopped with the run's
other processes when a group fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ckpt_pipeline.testing.pipeline import WORKERS_KEY, Pipeline
from ckpt_pipeline.testing.processes import Proc
from scorer_worker.topology import masters

from .common import TOKEN, Context


class BenchPipeline(Pipeline):
    """A private Redis, a SQLite sink, and the pipeline's processes, for one benchmark.

    Args:
        ctx: the run.
        name: names the folder and the log files.
        scoring: ``rq worker scoring`` processes (0 for none; default: the run's).
        sink: ``rq worker sink`` processes (default: the run's).
        pump: start ``ckpt-pipeline pump``.
        sink_url: a sink URL instead of a new SQLite file.
        redis_args: more redis-server arguments (of the private, queue-side server).
        env: more environment for the processes.
        data_url: the data side (``CKPT_DATA_REDIS_URL``: a server or a cluster node) that
            the caller started; by default the data lives on the private server.
        data_pids: the data side's server processes by name, for :meth:`cpu_seconds`.
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
        data_url: str | None = None,
        data_pids: dict[str, int] | None = None,
    ) -> None:
        folder = ctx.folder(name)
        super().__init__(
            folder,
            redis_args=redis_args or (),
            data_url=data_url,
            sink_url=sink_url,
            pumps=1 if pump else 0,
            scoring=(ctx.scoring_workers or 1) if scoring is None else scoring,
            sink=ctx.sink_workers if sink is None else sink,
            settings={"CKPT_SPOOL_DIR": folder / "spool"},
            env=env,
            inherit_settings=True,
            worker_class=ctx.worker_class,
            connection_class=ctx.connection_class,
            model_name="bench",
            token=TOKEN,
        )
        self.ctx = ctx
        self.name = name
        self.profilers: list[Proc] = []
        self.data_pids = dict(data_pids or {})
        ctx.pipelines.append(self)  # closed by ctx.cleanup() if the group fails

    def start_processes(self, *, wait: bool = True) -> None:
        """Start the pump and the workers; wait until the workers are registered."""
        self.start(wait=wait)
        if self.ctx.profile_dir is not None:
            self._start_profilers()

    def close(self, timeout_s: float = 3.0) -> None:
        """Stop the profilers, the processes and the Redis."""
        self.stop_profilers()
        super().close(timeout_s)
        if self in self.ctx.pipelines:
            self.ctx.pipelines.remove(self)

    def _start_profilers(self) -> None:
        """Sample every pipeline process with py-spy (samples holding the GIL: Python CPU time)."""
        py_spy = shutil.which("py-spy")
        if py_spy is None:
            self.ctx.log("  --profile: py-spy not found (pip install py-spy); not profiling")
            return
        self.ctx.profile_dir.mkdir(parents=True, exist_ok=True)
        for proc in self.all():
            output = self.ctx.profile_dir / f"{self.name}-{proc.name}.txt"
            args = [
                py_spy, "record", "--pid", str(proc.pid), "--rate", "250", "--format", "raw",
                "--function", "--subprocesses", "--gil", "--output", str(output),
            ]  # fmt: skip
            self.profilers.append(self.ctx.spawn(args, f"{self.name}-{proc.name}-py-spy"))

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

    def worker_stats(self, seconds: float) -> dict[str, Any]:
        """Per rq worker: tasks done, tasks per second over ``seconds``, and the time rq
        measured inside the task functions versus the wall time per task."""
        client = self._client()
        # The Procfile names no worker: rq's record of each is found by the worker's pid.
        by_pid = {}
        for key in client.smembers(WORKERS_KEY):
            data = client.hgetall(key)
            by_pid[int(data.get(b"pid") or 0)] = data
        stats = {}
        for proc in self.procs["scoring"] + self.procs["sink"]:
            data = by_pid.get(proc.pid or -1, {})
            done = int(data.get(b"successful_job_count") or 0)
            working = float(data.get(b"total_working_time") or 0.0)
            stats[proc.name] = {
                "tasks": done,
                "tasks_per_s": round(done / seconds, 1),
                "ms_in_task_function_per_task": round(1000 * working / done, 2) if done else None,
                "ms_wall_per_task_idle_included": round(1000 * seconds / done, 2) if done else None,
            }
        return stats

    def servers(self) -> list[Any]:
        """A client of every Redis server the pipeline uses: the queue side, then the data
        side's masters (none more when the data lives on the queue side)."""
        clients = [self._client()]
        if self.data is not self.client:
            clients += masters(self.data)
        return clients

    def pids(self) -> dict[str, int]:
        """The pipeline's processes and servers by name: the Procfile's processes, the
        queue-side ``redis-server``, and the data side's servers (``data_pids``)."""
        found = {proc.name: proc.pid for proc in self.all() if proc.pid is not None}
        if self.server is not None and self.server.process is not None:
            found["redis-queue"] = self.server.process.pid
        return {**found, **self.data_pids}


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User plus system CPU seconds each process has used so far (0 for one that ended)."""
    import psutil

    used = {}
    for name, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            used[name] = times.user + times.system
        except psutil.Error:
            used[name] = 0.0
    return used


def cpu_by_role(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds used between two :func:`cpu_seconds` readings, summed by role (the name
    up to its last ``-``: ``scoring-0`` and ``scoring-1`` are ``scoring``)."""
    roles: dict[str, float] = {}
    for name, seconds in after.items():
        role = name.rsplit("-", 1)[0] if name[-1:].isdigit() else name
        roles[role] = roles.get(role, 0.0) + max(0.0, seconds - before.get(name, 0.0))
    return {role: round(seconds, 2) for role, seconds in sorted(roles.items())}


@contextlib.contextmanager
def sqlite_reader(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the sink's file (WAL: it never blocks the writer)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def start_loadgen(ctx: Context, pipeline: BenchPipeline, name: str, **config: Any):
    """Start ``python -m benchmarks.loadgen`` against the pipeline's data side.

    Returns:
        The process and the path its summary will be written to.
    """
    output = pipeline.folder / f"{name}.json"
    config_path = pipeline.folder / f"{name}-config.json"
    url = pipeline.data_url or pipeline.url  # the pods publish to the data side
    config_path.write_text(json.dumps({"url": url, "output": str(output), **config}))
    args = [sys.executable, "-m", "benchmarks.loadgen", str(config_path)]
    return ctx.spawn(args, f"{pipeline.name}-{name}", pipeline.env), output


def finish_loadgen(ctx: Context, process: Proc, output: Path, timeout_s: float) -> dict:
    """Wait for a load generator to end and return its summary.

    Raises:
        RuntimeError: it failed or did not end in time (it is killed then).
    """
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        ctx.stop(process)
        raise RuntimeError(f"load generator still running after {timeout_s:.0f}s") from None
    code = process.returncode
    ctx.stop(process)
    if code != 0:
        raise RuntimeError(f"load generator failed ({code}): {process.log_tail()}")
    return json.loads(output.read_text())
