"""What every benchmark group shares: the figures, their formatting, the run's context.

The pipeline itself (its Redis, sink and the Procfile's processes), the synthetic events and
the waiting come from ``ckpt_pipeline.testing``, which the chaos experiments use too;
``benchmarks/pipeline.py`` adds what only a benchmark needs of a pipeline.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ckpt_pipeline.testing.local_redis import LocalRedis
from ckpt_pipeline.testing.processes import (
    CONNECTION_CLASS_FLAG,
    WORKER_CLASS_FLAG,
    Proc,
    option_value,
    role_command,
)

TOKEN = "bench-token"


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
    """One benchmark run: its mode, sizes, folder, processes and worker settings.

    ``worker_class`` and ``connection_class`` replace the Procfile's rq classes when set
    (``connection_class=""``: none, rq's own ``redis.Redis``); by default the workers run
    the Procfile's commands as they are.
    """

    quick: bool
    workdir: Path
    worker_class: str | None = None
    scoring_workers: int | None = None  # None: 1, and FANOUT_SCORING_WORKERS for fan-out
    sink_workers: int = 1
    sizes: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)
    processes: list[Proc] = field(default_factory=list)
    servers: list[Any] = field(default_factory=list)
    pipelines: list[Any] = field(default_factory=list)  # benchmarks.pipeline.BenchPipeline
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

    def spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> Proc:
        """Start a process in its own session (so its children die with it); log to
        ``<workdir>/<name>.log``. It is stopped at the end of the group whatever happens."""
        env = dict(env if env is not None else os.environ)
        process = Proc(name, 0, args, env, self.workdir, label=name).start()
        self.processes.append(process)
        return process

    def stop(self, process: Proc, timeout_s: float = 5.0) -> None:
        """Stop one started process and its children: SIGTERM, then SIGKILL."""
        process.stop(timeout_s)
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
        """Stop every process, pipeline and server this run started (also on failure)."""
        for process in list(self.processes):
            self.stop(process, timeout_s=2.0)
        for pipeline in list(self.pipelines):
            with contextlib.suppress(Exception):
                pipeline.close(timeout_s=2.0)
        self.pipelines.clear()
        for server in list(self.servers):
            with contextlib.suppress(Exception):
                server.kill()
        self.servers.clear()

    def worker_command(self, queue: str) -> list[str]:
        """The command of this run's ``rq worker`` of ``queue``: the Procfile's, with the
        run's class overrides (``$REDIS_URL`` left unresolved)."""
        return role_command(
            queue,
            "$REDIS_URL",
            worker_class=self.worker_class,
            connection_class=self.connection_class,
        )

    @property
    def effective_worker_class(self) -> str:
        """The rq worker class the workers run."""
        return option_value(self.worker_command("scoring"), WORKER_CLASS_FLAG) or "rq.Worker"

    def worker_settings(self) -> dict[str, Any]:
        """The worker settings of this run, as recorded in the outputs."""
        env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("CKPT_")}
        env.pop("CKPT_SINK", None)
        command = self.worker_command("scoring")
        return {
            "worker_class": self.effective_worker_class,
            "connection_class": option_value(command, CONNECTION_CLASS_FLAG) or "redis.Redis",
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
