"""The shared harness (``ckpt_pipeline.testing``) that the experiments and the benchmarks run
the pipeline with: the Procfile's commands, the processes' environment, kills that take the
whole tree, and one pipeline draining and writing. Quick: these run in the default suite, so
a broken harness shows before a chaos run or a benchmark does.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

from ckpt_pipeline.testing.convergence import last_entry_ids, wait_converged, wait_until
from ckpt_pipeline.testing.events import JobEvents, xadd_all
from ckpt_pipeline.testing.pipeline import Pipeline
from ckpt_pipeline.testing.processes import (
    PROCFILE,
    ROLES,
    Proc,
    pipeline_env,
    process_tree_rss,
    role_command,
)

needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")

# A process that forks a child into a session of its own, as RQ does with a work-horse, and
# writes the child's pid where the test can read it.
FORKER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                         start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""


def gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_every_role_runs_the_procfiles_command_as_written(tmp_path):
    lines = dict(line.split(":", 1) for line in PROCFILE.read_text().splitlines() if ":" in line)
    pipeline = Pipeline(tmp_path, redis_url="redis://127.0.0.1:1/0", sink_url="sqlite:///x.db")
    assert set(lines) == set(ROLES)
    for role in ROLES:
        written = shlex.split(lines[role])
        args = pipeline.procs[role][0].args
        if written[0] == "ckpt-pipeline":  # run by this interpreter, as the console script
            assert args[:3] == [sys.executable, "-m", "ckpt_pipeline.cli"]
            assert args[3:] == written[1:]
        else:
            assert Path(args[0]).name == written[0] and args[1:] == written[1:]


def test_class_overrides_replace_or_drop_the_procfiles_options():
    args = role_command("scoring", "redis://x/0", worker_class="rq.Worker", connection_class="")
    assert args[args.index("--worker-class") + 1] == "rq.Worker"
    assert "--connection-class" not in args
    assert role_command("pump", "redis://x/0", worker_class="rq.Worker")[-1] == "pump"


def test_the_environment_drops_the_shells_settings_unless_asked(monkeypatch):
    monkeypatch.setenv("CKPT_FLUSH_LOCK_TTL_S", "99")
    monkeypatch.setenv("PGHOST", "elsewhere")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    isolated = pipeline_env(
        "redis://r/0", "sqlite:///s.db", settings={"queued_marker_ttl_s": 5}, python_paths=["/p"]
    )
    assert "CKPT_FLUSH_LOCK_TTL_S" not in isolated and "PGHOST" not in isolated
    assert isolated["CKPT_QUEUED_MARKER_TTL_S"] == "5"
    assert isolated["REDIS_URL"] == isolated["RQ_REDIS_URL"] == "redis://r/0"
    assert isolated["CKPT_SINK"] == "sqlite:///s.db"
    assert isolated["PYTHONPATH"].split(os.pathsep)[0] == "/p"
    assert "/somewhere" not in isolated["PYTHONPATH"]
    inherited = pipeline_env("redis://r/0", "sqlite:///s.db", inherit_settings=True)
    assert inherited["CKPT_FLUSH_LOCK_TTL_S"] == "99" and inherited["PGHOST"] == "elsewhere"
    assert inherited["PYTHONPATH"].split(os.pathsep)[-1] == "/somewhere"


def test_a_kill_takes_a_child_in_a_session_of_its_own(tmp_path):
    pid_file = tmp_path / "child.pid"
    args = [sys.executable, "-c", FORKER, str(pid_file)]
    proc = Proc("forker", 0, args, dict(os.environ), tmp_path).start()
    try:
        wait_until(lambda: pid_file.exists() and pid_file.read_text(), 10, what="the child")
        child = int(pid_file.read_text())
        assert process_tree_rss(proc.pid) > 0
        proc.kill()
        wait_until(lambda: gone(child), 5, what="the child to die")
        assert proc.kills == 1 and not proc.alive
        assert process_tree_rss(proc.pid) == 0
    finally:
        proc.stop(timeout_s=1)


@needs_redis
def test_a_pipeline_of_the_procfiles_processes_drains_and_writes(tmp_path):
    jobs = [f"harness-{index}" for index in range(3)]
    streams = [(job, JobEvents(job).take(200, end=True)) for job in jobs]
    with Pipeline(tmp_path, scoring=1, sink=1) as pipeline:
        pipeline.start(wait=True)
        pipeline.register(jobs)
        last = last_entry_ids(jobs, xadd_all(pipeline.client, streams))
        wait_until(lambda: pipeline.caught_up(last), 60, 0.05, "the jobs to be written")
        wait_converged(pipeline.client, jobs, timeout_s=30)
        assert pipeline.exited() == []
        assert [level.cursor for level in pipeline.job_levels(jobs)] == list(last.values())
    with sqlite3.connect(pipeline.db_path) as conn:
        rows = conn.execute("SELECT id, status FROM local_training_jobs").fetchall()
    assert sorted(rows) == [(job, "completed") for job in jobs]
    assert not any(proc.alive for proc in pipeline.all())  # the context manager stopped them
