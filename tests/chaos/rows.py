"""The rows a run leaves in PostgreSQL, compared with a reference run's; and PostgreSQL
faults (slow writes) and write counting, made with triggers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from sink.rows import JOB_COLUMN_NAMES, METRIC_COLUMN_NAMES

# The row columns that legitimately differ between two runs of the same events:
# scoring_version counts state commits, and how events fall into drain batches depends on
# timing (a fault-free run commits in fewer, larger batches).
VERSION_COLUMNS = ("scoring_version",)


def pg_execute(url: str, sql: str, params: Any = None) -> list[tuple]:
    """Run one statement (autocommit); return its rows, if it has any."""
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
        """Jobs whose row or metric rows are missing or differ."""
        return len(self.missing_rows) + len(self.differing_rows) + len(self.differing_metrics)

    def summary(self) -> dict[str, Any]:
        """The counts, as recorded in the results file."""
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
