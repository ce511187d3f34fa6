"""Row writes for a burst of 1,000 events in 10 s on one job (the old way: 2,000).

A load generator process publishes 1,000 events to one job over 10 s (100/s: train logs and
an eval every 100th step) while the pipeline runs. SQLite triggers count what the sink does to
the database: each UPDATE of the job's ``local_training_jobs`` row (one per flush that wrote:
the figure) and each metric row inserted, with the version it was written at (how many
flushes also wrote metric rows). The count stops when the row holds the last event.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from typing import Any

from .common import Context, Figure
from .pipeline import BenchPipeline, finish_loadgen, start_loadgen

NAMES = ("row_writes_per_job",)
JOB = "writes-job"
TRIGGERS = """
CREATE TABLE bench_row_writes (job_id TEXT, version INTEGER);
CREATE TRIGGER bench_row_write AFTER UPDATE ON local_training_jobs BEGIN
  INSERT INTO bench_row_writes VALUES (NEW.id, NEW.scoring_version);
END;
CREATE TABLE bench_metric_writes (job_id TEXT, step INTEGER, version INTEGER);
CREATE TRIGGER bench_metric_write AFTER INSERT ON local_training_metrics BEGIN
  INSERT INTO bench_metric_writes SELECT NEW.job_id, NEW.step, scoring_version
  FROM local_training_jobs WHERE id = NEW.job_id;
END;
"""


def sizes(quick: bool) -> dict[str, Any]:
    return {"events": 1000, "duration_s": 10, "eval_every": 100}


def run(ctx: Context) -> list[Figure]:
    size = ctx.sizes["writes"]
    with BenchPipeline(ctx, "writes") as pipeline:
        pipeline.register([JOB])
        with contextlib.closing(sqlite3.connect(pipeline.db_path)) as conn:
            conn.executescript(TRIGGERS)
        pipeline.start_processes()
        process, output = start_loadgen(
            ctx, pipeline, "loadgen", jobs=[JOB], rate_per_job=size["events"] / size["duration_s"],
            duration_s=size["duration_s"], max_events=size["events"], record="all",
            eval_every=size["eval_every"],
        )  # fmt: skip
        summary = finish_loadgen(ctx, process, output, size["duration_s"] + 60)
        last = summary["records"][JOB][-1][2]
        deadline = time.monotonic() + 30
        while not pipeline.caught_up({JOB: last}):
            if time.monotonic() > deadline:
                raise TimeoutError("the row did not catch up within 30 s of the burst")
            time.sleep(0.05)
        time.sleep(0.5)  # a flush still running would count too
        with contextlib.closing(sqlite3.connect(pipeline.db_path)) as conn:
            row_writes = conn.execute("SELECT count(*) FROM bench_row_writes").fetchone()[0]
            metric_rows, metric_flushes = conn.execute(
                "SELECT count(*), count(DISTINCT version) FROM bench_metric_writes"
            ).fetchone()
            version = conn.execute(
                "SELECT scoring_version FROM local_training_jobs WHERE id = ?", (JOB,)
            ).fetchone()[0]
    ctx.details["writes"] = {
        "events": summary["sent"],
        "burst_s": round(summary["elapsed_s"], 2),
        "job_row_updates": row_writes,
        "flushes_writing_metric_rows": metric_flushes,
        "metric_rows_written": metric_rows,
        "final_scoring_version": version,
        "old_way_writes": 2 * summary["sent"],
    }
    note = (
        f"{summary['sent']:,} events in {summary['elapsed_s']:.1f} s on one job: {row_writes} "
        f"row UPDATEs (+{metric_flushes} metric batches, {metric_rows:,} metric rows); "
        f"old way {2 * summary['sent']:,}"
    )
    return [Figure("row_writes_per_job", row_writes, "writes", "<=", 12, note)]
