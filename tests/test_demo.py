"""The main job: `ckpt-pipeline demo` runs end to end with no configuration."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sink.writers.sqlite import SqliteWriter

pytestmark = pytest.mark.slow


def test_demo_runs_and_the_score_disagrees_with_eval_loss(tmp_path, monkeypatch):
    for name in ("REDIS_URL", "CKPT_SINK", "JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "scorer_worker.cli", "demo", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    picks = dict(re.findall(r"^  (eval_loss only|multi-metric)\s+(checkpoint-\d+)", out, re.M))
    assert picks["eval_loss only"] != picks["multi-metric"]  # the demo shows the two picks differ
    assert "agrees with the row" in out
    assert (workdir / "demo.png").stat().st_size > 10_000
    writer = SqliteWriter(workdir / "demo.db")
    (job_id,) = {
        line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("job ")
    }
    row = writer.read_job(job_id)
    assert row["status"] == "completed"
    assert row["best_checkpoint_path"].endswith(picks["multi-metric"])
    assert row["best_step"] != row["best_checkpoint_step"]
