"""Faults the experiments inject into the processes: SIGKILLs at random instants or in a
phase the probes of ``inject/sitecustomize.py`` mark, each followed by a restart.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from ckpt_pipeline.testing.convergence import levels
from ckpt_pipeline.testing.pipeline import Pipeline
from ckpt_pipeline.testing.processes import Proc

TARGETED_PHASES = {
    "post-commit": "after its state commit, before it asked for the sink flush",
    "mid-flush": "inside the sink's PostgreSQL transaction, its row UPDATE slowed by pg_sleep",
    "task-start": "after taking a task from the queue, before the task started",
}


@dataclass
class Kill:
    """One kill: when (seconds into the experiment), what was aimed at, the role and process."""

    at_s: float
    kind: str
    role: str
    target: str


class Chaos:
    """SIGKILLs pipeline processes at random instants or in a probed phase, and restarts them.

    Args:
        pipeline: the processes.
        client: Redis, to tell whether a job was committed but not yet flushed at kill time.
        probe_dir: where the probes of ``inject/sitecustomize.py`` mark phases.
        rng: the seeded RNG that decides targets and pauses.
        job_ids: the jobs, for the committed-not-flushed check.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        client: redis.Redis,
        probe_dir: Path | None,
        rng: random.Random,
        job_ids: list[str],
    ) -> None:
        self.pipeline, self.client, self.probe_dir = pipeline, client, probe_dir
        self.rng, self.job_ids = rng, job_ids
        self.kills: list[Kill] = []
        self.misses = 0
        self.start = time.monotonic()
        self.last_fault = self.start

    def kill(self, kind: str, wait_s: float = 3.0) -> Kill:
        """Kill one process: ``pump``, ``scoring`` or ``sink`` at a random instant, or the
        process found in a probed phase (``post-commit``, ``mid-flush``, ``task-start``);
        a phase not seen within ``wait_s`` falls back to a random kill of a worker."""
        proc, label = None, kind
        if kind in TARGETED_PHASES:
            proc = self._in_phase({"mid-flush": "flush"}.get(kind, kind), wait_s)
            if proc is None:
                self.misses += 1
                kind = self.rng.choice(["scoring", "sink"])
                label = f"{kind} (random, phase {label!r} not seen)"
        if proc is None:
            proc = self.rng.choice(self.pipeline.procs[kind])
            if kind == "sink" and levels(self.client, self.job_ids).behind_sink:
                label = "sink (random; jobs committed but not yet flushed)"
        proc.kill()
        entry = Kill(round(time.monotonic() - self.start, 3), label, proc.role, proc.name)
        self.kills.append(entry)
        time.sleep(self.rng.uniform(0.0, 0.3))
        proc.start()
        self.last_fault = time.monotonic()
        return entry

    def _in_phase(self, phase: str, wait_s: float) -> Proc | None:
        if self.probe_dir is None:
            return None
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            found = probes(self.probe_dir, phase)
            self.rng.shuffle(found)
            for pid in found:
                proc = self.pipeline.by_pid(pid)
                if proc is not None and (self.probe_dir / f"{pid}.{phase}").exists():
                    return proc
            time.sleep(0.01)
        return None

    def by_kind(self) -> dict[str, int]:
        """Kills so far per kind (a missed phase counts under its random fallback)."""
        counts: dict[str, int] = {}
        for kill in self.kills:
            counts[kill.kind] = counts.get(kill.kind, 0) + 1
        return counts


def probes(probe_dir: Path, phase: str) -> list[int]:
    """Worker processes whose work-horse is in ``phase`` now (``post-commit``, ``flush``,
    ``task-start``)."""
    found = []
    for path in probe_dir.glob(f"*.{phase}"):
        with contextlib.suppress(ValueError):
            found.append(int(path.name.split(".", 1)[0]))
    return found
