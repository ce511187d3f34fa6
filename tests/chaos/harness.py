"""What only the chaos experiments add to the shared harness: probes, the reference run, the
results file.

The pipeline itself (the Procfile's processes, their environment, kills and restarts), the
synthetic runs and convergence come from ``ckpt_pipeline.testing``, which the benchmarks use
too. The experiments run the processes against a Redis of their own (AOF on, a fixed port:
they restart it) and a PostgreSQL database, and load ``inject/sitecustomize.py`` into them
to aim kills at a phase or to inject a poison event.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from ckpt_pipeline.testing import jobs as platform_jobs
from ckpt_pipeline.testing.convergence import levels
from ckpt_pipeline.testing.events import xadd_many
from ckpt_pipeline.testing.jobs import Job
from ckpt_pipeline.testing.processes import REPO
from scorer_worker import keys
from scorer_worker.deadletter import dead_letter_jobs

INJECT_DIR = Path(__file__).resolve().with_name("inject")
RESULTS_ENV = "CKPT_CHAOS_RESULTS"
MODEL_NAME = "chaos-model"


def probe_options(probe_dir: Path | None, tunables: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Pipeline`` options (``settings``, ``python_paths``) of an experiment.

    With ``probe_dir``, or a ``CKPT_CHAOS_*`` tunable, the processes also load
    ``tests/chaos/inject/sitecustomize.py``, which marks the phases a kill should land in
    (after a state commit, inside a sink write) or injects a poison event.
    """
    settings = dict(tunables)
    if probe_dir is not None:
        settings["CKPT_CHAOS_PROBE_DIR"] = str(probe_dir)
    probed = probe_dir is not None or any(name.startswith("CKPT_CHAOS_") for name in tunables)
    return {"settings": settings, "python_paths": [INJECT_DIR] if probed else []}


def setup_jobs(pg_url: str, client: redis.Redis, jobs: list[Job], data: Any = None) -> list[Job]:
    """What the platform does for each job: create the row, register the job (the index on
    ``client``, the queue side; the token on ``data``, the data side, by default ``client``)."""
    return platform_jobs.setup_jobs(pg_url, client, jobs, model_name=MODEL_NAME, data=data)


def dead_letter_count(client: redis.Redis) -> int:
    """Dead letters of every job."""
    return sum(int(client.xlen(keys.dead(job))) for job in dead_letter_jobs(client))


# --- the fault-free reference -------------------------------------------------------------


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration (tasks read their settings from it)."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def reference_run(
    redis_url: str, sink_url: str, jobs: list[Job], events: dict[str, list[str]]
) -> float:
    """A fault-free run of the same events: publish them all, then drain and flush them
    in this process with the all-in-one runner (the same tasks, no faults).

    Returns:
        The seconds it took.
    """
    from ckpt_pipeline.runner import run_all_in_one
    from scorer_worker.settings import Settings

    client = redis.Redis.from_url(redis_url)
    setup_jobs(sink_url, client, jobs)
    start = time.monotonic()
    for job in jobs:
        xadd_many(client, job.id, events[job.id])
    with environment({"REDIS_URL": redis_url, "CKPT_SINK": sink_url}):
        run_all_in_one(client, Settings.from_env(), burst=True)
    assert levels(client, [job.id for job in jobs]).converged
    client.close()
    return time.monotonic() - start


# --- figures ------------------------------------------------------------------------------


def results_path() -> Path:
    """The results file: ``$CKPT_CHAOS_RESULTS``, or ``chaos-results.json`` in the checkout."""
    return Path(os.environ.get(RESULTS_ENV) or REPO / "chaos-results.json")


def record(experiment: str, figures: dict[str, Any]) -> None:
    """Store an experiment's figures in the results file (replacing its previous entry)."""
    path = results_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data.setdefault("experiments", {})[experiment] = {
        **figures,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
