"""The main job: `ckpt-pipeline demo` runs end to end with no configuration and shows the loop."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sink.writers.sqlite import SqliteWriter

pytestmark = pytest.mark.slow

PATIENCE_STEPS = 2 * 10  # early_stopping_patience=2 evaluations, one every 10 steps


def _side_by_side(out: str, label: str) -> tuple[str, str]:
    """The two cells (Hugging Face alone, with the loop) of a row of the side-by-side table."""
    line = next(line for line in out.splitlines() if line.startswith(f"  {label}  "))
    cells = re.split(r"\s{3,}", line.strip())
    assert len(cells) == 3, line
    return cells[1], cells[2]


def test_demo_shows_the_loop_keep_load_and_stop_on_the_score(tmp_path, monkeypatch):
    for name in ("REDIS_URL", "CKPT_SINK", "JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", "demo", "--workdir", str(workdir)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    picks = dict(re.findall(r"^  (eval_loss only|multi-metric)\s+(checkpoint-\d+)", out, re.M))
    best, lowest = picks["multi-metric"], picks["eval_loss only"]
    assert best != lowest  # the demo shows the two picks differ
    best_step, lowest_step = int(best.split("-")[1]), int(lowest.split("-")[1])
    assert "agrees with the row" in out
    assert (workdir / "demo.png").stat().st_size > 10_000

    # Rotation (save_total_limit=2): Hugging Face alone deletes the composite best; the loop
    # keeps it, and the loaded weights are that folder's.
    assert (workdir / "output" / best).is_dir()
    assert not (workdir / "output-hf-alone" / best).exists()
    assert _side_by_side(out, f"{best} on disk") == ("no: rotation deleted it", "yes")
    assert _side_by_side(out, "loaded at the end") == (
        f"{lowest} (final weights equal it)",
        f"{best} (final weights equal it)",
    )
    # Early stopping: each run stops `patience` evaluations after its own best.
    stopped = _side_by_side(out, "stopped at")
    control_stop, loop_stop = (int(re.match(r"step (\d+) of", cell)[1]) for cell in stopped)
    assert loop_stop == best_step + PATIENCE_STEPS
    assert control_stop == lowest_step + PATIENCE_STEPS
    assert re.search(rf"^\s+{loop_stop} .*2/2 without improvement: stop$", out, re.M)

    # The rows: the loop's names one checkpoint in all its best_* columns.
    (jobs,) = re.findall(r"^jobs (\S+), (\S+): pending rows created", out, re.M)
    loop_job, control_job = jobs
    assert control_job == f"{loop_job}-hf"
    writer = SqliteWriter(workdir / "demo.db")
    row = writer.read_job(loop_job)
    assert row["status"] == "completed"
    assert row["best_checkpoint_path"].endswith(f"/output/{best}")
    assert row["best_step"] == row["best_checkpoint_step"] == best_step
    assert row["best_score_breakdown"]["eval_loss_pick"]["step"] == lowest_step
    assert "best_step == best_checkpoint_step" in out
    assert re.search(rf"eval_loss_pick\s+step {lowest_step},", out)
    # Without the loop the row can only name a checkpoint that rotation kept.
    control = writer.read_job(control_job)
    assert control["status"] == "completed"
    assert control["best_checkpoint_step"] != best_step
    assert control["best_checkpoint_path"].endswith(f"/output-hf-alone/{lowest}")
