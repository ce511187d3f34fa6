"""The chaos harness: real pipeline processes, platform rows, convergence, comparison, figures.

Everything here drives the pipeline from the outside, as an operator would: processes are
started with the commands of the Procfile (``ckpt-pipeline pump``, ``rq worker scoring
--url ...``, ``rq worker sink --url ...``), each in a process group of its own; a kill takes
the process and the work-horse RQ forked for its running task.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import random
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from producer.events import build_event, encode_event
from scorer_worker import keys
from scorer_worker.deadletter import dead_letter_jobs
from scorer_worker.registry import register_job
from sink.rows import JOB_COLUMN_NAMES, METRIC_COLUMN_NAMES

REPO = Path(__file__).resolve().parents[2]
INJECT_DIR = Path(__file__).resolve().with_name("inject")
RESULTS_ENV = "CKPT_CHAOS_RESULTS"
# The row columns that legitimately differ between two runs of the same events:
# scoring_version counts state commits, and how events fall into drain batches depends on
# timing (a fault-free run commits in fewer, larger batches).
VERSION_COLUMNS = ("scoring_version",)
ROLES = ("pump", "scoring", "sink")


def procfile_commands(redis_url: str) -> dict[str, list[str]]:
    """The commands of the repository's Procfile, by role, ``$REDIS_URL`` substituted and the
    console scripts resolved in this interpreter's environment."""
    commands = {}
    for line in (REPO / "Procfile").read_text().splitlines():
        role, sep, command = line.partition(":")
        if not sep or not command.strip():
            continue
        args = shlex.split(command.replace("$REDIS_URL", redis_url))
        beside = Path(sys.executable).with_name(args[0])
        if args[0] == "ckpt-pipeline":
            args = [sys.executable, "-m", "ckpt_pipeline.cli", *args[1:]]
        elif beside.exists():
            args[0] = str(beside)
        commands[role.strip()] = args
    return commands


def role_command(role: str, redis_url: str) -> list[str]:
    """The Procfile command of a role (``pump``, ``scoring``, ``sink``)."""
    return procfile_commands(redis_url)[role]


def pipeline_env(
    redis_url: str, sink_url: str, probe_dir: Path | None = None, **tunables: Any
) -> dict[str, str]:
    """Environment of the pipeline processes: REDIS_URL, CKPT_SINK and ``CKPT_<FIELD>``.

    With ``probe_dir``, or a ``CKPT_CHAOS_*`` tunable, the processes also load
    ``tests/chaos/inject/sitecustomize.py``, which marks the phases a kill should land in
    (after a state commit, inside a sink write) or injects a poison event.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPT_", "PG"))}
    paths = [str(REPO)]
    if probe_dir is not None:
        env["CKPT_CHAOS_PROBE_DIR"] = str(probe_dir)
    if probe_dir is not None or any(name.startswith("CKPT_CHAOS_") for name in tunables):
        paths.insert(0, str(INJECT_DIR))
    env.update(
        REDIS_URL=redis_url,
        RQ_REDIS_URL=redis_url,  # rq worker's --url, kept out of `ps` (the Procfile)
        CKPT_SINK=sink_url,
        PYTHONPATH=os.pathsep.join(paths),
        PYTHONUNBUFFERED="1",
    )
    for name, value in tunables.items():
        env[name if name.startswith("CKPT_") else f"CKPT_{name.upper()}"] = str(value)
    return env


@dataclass
class Proc:
    """One pipeline process, in its own process group."""

    role: str
    index: int
    args: list[str]
    env: dict[str, str]
    log_dir: Path
    popen: subprocess.Popen | None = None
    starts: int = 0
    kills: int = 0

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{self.name}.log", "ab")  # noqa: SIM115 (owned by the child)
        log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
        log.flush()
        self.popen = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group: the work-horse dies with it
        )
        log.close()
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL the process and its work-horse, as a crash, an OOM kill or a lost machine
        would. RQ puts each work-horse in a session of its own, so the group is frozen first
        (no new fork), the horse found among its children, and every one killed."""
        if self.popen is None:
            return
        _kill_tree(self.popen.pid)
        self.popen.wait()
        self.kills += 1

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process (a clean shutdown: RQ lets the running task finish), then
        SIGKILL whatever is left."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout_s)
        _kill_tree(self.popen.pid)
        self.popen.wait()


def _kill_tree(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGSTOP)
    for victim in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), whatever its session."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Pipeline:
    """The pump, ``scoring`` workers and ``sink`` workers of one experiment."""

    def __init__(
        self, env: dict[str, str], log_dir: Path, *, pumps: int = 1, scoring: int = 2, sink: int = 2
    ) -> None:
        self.env = env
        self.log_dir = log_dir
        counts = {"pump": pumps, "scoring": scoring, "sink": sink}
        self.procs: dict[str, list[Proc]] = {
            role: [
                Proc(role, i, role_command(role, env["REDIS_URL"]), env, log_dir)
                for i in range(counts[role])
            ]
            for role in ROLES
        }

    def all(self) -> list[Proc]:
        return [proc for role in ROLES for proc in self.procs[role]]

    def start(self) -> Pipeline:
        for proc in self.all():
            proc.start()
        return self

    def stop(self) -> None:
        for proc in self.all():
            proc.stop()

    def by_pid(self, pid: int) -> Proc | None:
        return next((p for p in self.all() if p.pid == pid and p.alive), None)

    def redeploy(self, role: str, env: dict[str, str]) -> None:
        """Stop a role's processes cleanly and start them again with ``env`` (a new release)."""
        for proc in self.procs[role]:
            proc.stop()
            proc.env = env
            proc.start()

    def check_alive(self) -> list[str]:
        """Names of processes that exited on their own (none should)."""
        return [p.name for p in self.all() if p.popen is not None and not p.alive]

    def kills(self) -> dict[str, int]:
        return {role: sum(p.kills for p in self.procs[role]) for role in ROLES}


# --- jobs and platform rows --------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: str
    token: str


def make_jobs(count: int, seed: int) -> list[Job]:
    """Deterministic job ids (uuid4 form, as the platform makes them) and tokens."""
    rng = random.Random(seed)
    return [
        Job(str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"tok-{rng.getrandbits(64):016x}")
        for _ in range(count)
    ]


def create_rows(pg_url: str, jobs: Iterable[Job]) -> None:
    """Insert the platform's ``pending`` rows (id, job_token, model_name)."""
    with psycopg.connect(pg_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO local_training_jobs (id, job_token, status, model_name) "
            "VALUES (%s, %s, 'pending', 'chaos-model')",
            [(job.id, job.token) for job in jobs],
        )


def register(client: redis.Redis, jobs: Iterable[Job]) -> None:
    for job in jobs:
        register_job(client, job.id, job.token)


def setup_jobs(pg_url: str, client: redis.Redis, jobs: list[Job]) -> list[Job]:
    """What the platform does for each job: create the row, register the job."""
    create_rows(pg_url, jobs)
    register(client, jobs)
    return jobs


# --- events -------------------------------------------------------------------------------


def synthetic_run(job_id: str, seed: int, count: int = 500, t0: float = 1.7e9) -> list[str]:
    """``synthetic_events``, encoded for the wire."""
    return [encode_event(event) for event in synthetic_events(job_id, seed, count, t0)]


def synthetic_events(
    job_id: str, seed: int, count: int = 500, t0: float = 1.7e9
) -> list[dict[str, Any]]:
    """A deterministic run of exactly ``count`` events for ``job_id``.

    A train_begin, a train_log per step, an eval every 10 steps, a checkpoint_saved every 20
    (3 retained); about half the runs crash and resume from their last checkpoint (a second
    train_begin, later timestamps, different losses); a few events are published twice
    (at-least-once delivery); a rare NaN eval loss; a train_end (completed or failed) last.
    """
    rng = random.Random(f"{seed}:{job_id}")
    max_steps = 400
    events: list[dict[str, Any]] = []
    resume_at = rng.randrange(150, 250) if rng.random() < 0.5 else None
    attempt, step, saves = 0, 0, []

    def emit(kind, metrics=None, info=None):
        ts = t0 + attempt * 10_000 + step * 2.0 + {"train_begin": 0.0}.get(kind, 1.0)
        epoch = round(step / 40, 4)
        events.append(build_event(kind, job_id, step, epoch, metrics, info, ts=ts))

    def begin(resumed_from: int):
        info = {"max_steps": max_steps, "num_train_epochs": 10, "resumed_from_step": resumed_from}
        emit("train_begin", info={**info, "save_total_limit": 3, "output_dir": f"/runs/{job_id}"})

    begin(0)
    while len(events) < count - 1:
        step += 1
        drift = 0.05 * attempt
        loss = 3.0 * math.exp(-step / 120) + 0.2 + drift + rng.uniform(-0.02, 0.02)
        rate, norm = 1e-3 * (1 - step / 500), rng.uniform(0.5, 2.0)
        emit("train_log", {"loss": loss, "learning_rate": rate, "grad_norm": norm})
        if step % 10 == 0 and len(events) < count - 1:
            value = 2.8 * math.exp(-step / 150) + 0.5 + (step / 500) ** 2 + drift
            value = math.nan if rng.random() < 0.01 else value
            emit("eval", {"eval_loss": value, "eval_runtime": 0.1})
        if step % 20 == 0 and len(events) < count - 1:
            saves = [*saves, step][-3:]
            retained = [f"checkpoint-{s}" for s in saves]
            emit(
                "checkpoint_saved", info={"checkpoint": f"checkpoint-{step}", "retained": retained}
            )
        if len(events) < count - 1 and rng.random() < 0.02:
            events.append(events[rng.randrange(len(events))])  # a replayed event
        if resume_at is not None and step == resume_at and len(events) < count - 1:
            attempt, step = 1, (saves[-1] if saves else 0)
            saves = [s for s in saves if s <= step]
            resume_at = None
            begin(step)
    status = "failed" if rng.random() < 0.1 else "completed"
    info = {"status": status, "error": "CUDA out of memory" if status == "failed" else None}
    emit("train_end", {"train_runtime": 12.5, "train_loss": 0.4}, info)
    return events[:count]


def xadd_many(client: redis.Redis, job_id: str, encoded: Iterable[str | bytes]) -> None:
    """Append raw ``event`` fields to a job's stream in one pipelined round."""
    pipe = client.pipeline(transaction=False)
    for payload in encoded:
        pipe.xadd(keys.events(job_id), {"event": payload})
    pipe.execute()


# --- convergence --------------------------------------------------------------------------


@dataclass
class Levels:
    """Where every job stands: undrained events, state version, written version."""

    behind_scoring: list[str] = field(default_factory=list)
    behind_sink: list[str] = field(default_factory=list)
    unstarted: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not (self.behind_scoring or self.behind_sink or self.unstarted)


def levels(client: redis.Redis, job_ids: list[str]) -> Levels:
    pipe = client.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.xlen(keys.events(job_id))
        pipe.hmget(keys.meta(job_id), "version", "written_version")
    replies = pipe.execute()
    found = Levels()
    for job_id, length, (version, written) in zip(
        job_ids, replies[::2], replies[1::2], strict=True
    ):
        version, written = int(version or 0), int(written or 0)
        if length:
            found.behind_scoring.append(job_id)
        if version > written:
            found.behind_sink.append(job_id)
        if version == 0:
            found.unstarted.append(job_id)
    return found


def wait_converged(
    client: redis.Redis, job_ids: list[str], timeout_s: float = 60.0, poll_s: float = 0.1
) -> float:
    """Wait until every job's stream is drained and its row holds the state's version.

    Returns:
        The seconds it took.

    Raises:
        AssertionError: not converged within ``timeout_s`` (with what is still behind).
    """
    start = time.monotonic()
    while True:
        try:
            now = levels(client, job_ids)
            if now.converged:
                return time.monotonic() - start
        except redis.ConnectionError:
            now = Levels(unstarted=["<redis unreachable>"])
        if time.monotonic() - start > timeout_s:
            raise AssertionError(
                f"not converged after {timeout_s:.0f}s: {len(now.behind_scoring)} behind scoring, "
                f"{len(now.behind_sink)} behind the sink, {len(now.unstarted)} without state "
                f"(e.g. {(now.behind_scoring + now.behind_sink + now.unstarted)[:3]})"
            )
        time.sleep(poll_s)


# --- rows ---------------------------------------------------------------------------------


def pg_execute(url: str, sql: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def read_rows(pg_url: str, job_ids: list[str]) -> dict[str, dict[str, Any]]:
    """``local_training_jobs`` rows by id: every column the sink writes."""
    columns = ", ".join(f'"{name}"' for name in JOB_COLUMN_NAMES)
    found = pg_execute(
        pg_url,
        f"SELECT id::text, {columns} FROM local_training_jobs WHERE id::text = ANY(%s)",
        (job_ids,),
    )
    return {row[0]: dict(zip(JOB_COLUMN_NAMES, row[1:], strict=True)) for row in found}


def read_metrics(pg_url: str, job_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """``local_training_metrics`` rows by job, ordered by step (duplicates kept, to count)."""
    columns = ", ".join(f'"{name}"' for name in METRIC_COLUMN_NAMES)
    found = pg_execute(
        pg_url,
        f"SELECT {columns} FROM local_training_metrics WHERE job_id::text = ANY(%s) "
        "ORDER BY job_id, step, id",
        (job_ids,),
    )
    by_job: dict[str, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
    for row in found:
        record = dict(zip(METRIC_COLUMN_NAMES, row, strict=True))
        by_job[str(record["job_id"])].append(record)
    return by_job


@dataclass
class Comparison:
    """How the rows of a run differ from those of a reference run of the same events."""

    jobs: int = 0
    metric_rows: int = 0
    missing_rows: list[str] = field(default_factory=list)
    differing_rows: list[str] = field(default_factory=list)
    differing_metrics: list[str] = field(default_factory=list)
    duplicate_metric_rows: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.missing_rows) + len(self.differing_rows) + len(self.differing_metrics)

    def summary(self) -> dict[str, Any]:
        return {
            "jobs_compared": self.jobs,
            "metric_rows_compared": self.metric_rows,
            "rows_missing": len(self.missing_rows),
            "rows_differing": len(self.differing_rows),
            "jobs_with_differing_metrics": len(self.differing_metrics),
            "duplicate_metric_rows": self.duplicate_metric_rows,
        }


def compare_runs(
    url: str, reference_url: str, job_ids: list[str], ignore: tuple[str, ...] = VERSION_COLUMNS
) -> Comparison:
    """Compare job rows and metric rows of ``url`` with those of ``reference_url``."""
    result = Comparison(jobs=len(job_ids))
    rows, expected_rows = read_rows(url, job_ids), read_rows(reference_url, job_ids)
    metrics, expected_metrics = read_metrics(url, job_ids), read_metrics(reference_url, job_ids)
    for job_id in job_ids:
        row, expected = rows.get(job_id), expected_rows.get(job_id)
        if row is None or expected is None:
            result.missing_rows.append(job_id)
            continue
        diff = {k: (row[k], expected[k]) for k in row if k not in ignore and row[k] != expected[k]}
        if diff:
            result.differing_rows.append(job_id)
            result.examples.append(f"{job_id}: {diff}")
        got, want = metrics[job_id], expected_metrics[job_id]
        result.metric_rows += len(got)
        result.duplicate_metric_rows += len(got) - len({m["step"] for m in got})
        if got != want:
            result.differing_metrics.append(job_id)
            result.examples.append(f"{job_id}: metrics {len(got)} rows vs {len(want)} expected")
    return result


def dead_letter_count(client: redis.Redis) -> int:
    return sum(int(client.xlen(keys.dead(job))) for job in dead_letter_jobs(client))


# --- PostgreSQL fault helpers -------------------------------------------------------------

WRITE_COUNTER_SQL = """
CREATE TABLE IF NOT EXISTS chaos_writes (
    job_id text, version bigint, at timestamptz DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION chaos_count_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chaos_writes (job_id, version) VALUES (NEW.id::text, NEW.scoring_version);
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_count_write ON local_training_jobs;
CREATE TRIGGER chaos_count_write AFTER UPDATE ON local_training_jobs
    FOR EACH ROW EXECUTE FUNCTION chaos_count_write();
"""

SLOW_WRITE_SQL = """
CREATE TABLE IF NOT EXISTS chaos_slow (fraction float8, seconds float8);
CREATE OR REPLACE FUNCTION chaos_slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE f float8; s float8;
BEGIN
    SELECT fraction, seconds INTO f, s FROM chaos_slow LIMIT 1;
    IF f IS NOT NULL AND random() < f THEN PERFORM pg_sleep(s); END IF;
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS chaos_slow_write ON local_training_jobs;
CREATE TRIGGER chaos_slow_write BEFORE UPDATE ON local_training_jobs
    FOR EACH ROW EXECUTE FUNCTION chaos_slow_write();
"""


def count_writes(url: str) -> None:
    """Record every row UPDATE (job, version, time) in ``chaos_writes``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(WRITE_COUNTER_SQL)


def slow_writes(url: str, fraction: float, seconds: float) -> None:
    """Make a ``fraction`` of row UPDATEs sleep ``seconds`` inside their transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SLOW_WRITE_SQL)
        conn.execute("DELETE FROM chaos_slow")
        conn.execute("INSERT INTO chaos_slow VALUES (%s, %s)", (fraction, seconds))


# --- probes written by tests/chaos/inject/sitecustomize.py --------------------------------


def probes(probe_dir: Path, phase: str) -> list[int]:
    """Worker processes whose work-horse is in ``phase`` now (``post-commit``, ``flush``,
    ``task-start``)."""
    found = []
    for path in probe_dir.glob(f"*.{phase}"):
        with contextlib.suppress(ValueError):
            found.append(int(path.name.split(".", 1)[0]))
    return found


# --- figures ------------------------------------------------------------------------------


def results_path() -> Path:
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


# --- aimed and random kills ----------------------------------------------------------------

TARGETED_PHASES = {
    "post-commit": "after its state commit, before it asked for the sink flush",
    "mid-flush": "inside the sink's PostgreSQL transaction, its row UPDATE slowed by pg_sleep",
    "task-start": "after taking a task from the queue, before the task started",
}


@dataclass
class Kill:
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
        counts: dict[str, int] = {}
        for kill in self.kills:
            counts[kill.kind] = counts.get(kill.kind, 0) + 1
        return counts
