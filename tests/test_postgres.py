"""PostgreSQL: migrations on empty and legacy databases, and the PostgresWriter, against a
private server started for this module (initdb + pg_ctl, random port, a database per test)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from ckpt_pipeline.cli import main
from ckpt_pipeline.testing.local_postgres import LocalPostgres
from scorer_worker.errors import ConfigError, PermanentSinkError, TransientSinkError
from scorer_worker.settings import Settings
from sink.migrate import (
    MIGRATIONS_DIR,
    MigrationError,
    load_migrations,
    run_migrations,
    split_statements,
)
from sink.rows import JOB_COLUMN_NAMES, JOB_COLUMNS, METRIC_COLUMNS
from sink.writers import WriteOutcome, retrying_write, writer_from_settings
from sink.writers.postgres import PostgresWriter
from tests.test_writers import make_metric, make_row

pytestmark = pytest.mark.slow
TOKEN = "tok-S3CRET-value"
OTHER_TOKEN = "tok-OTHER-value"
# Every file of sink/migrations, in order: a new column means a new file, and the tests below
# apply them all before comparing the database with the row model.
ALL_MIGRATIONS = sorted(path.name for path in MIGRATIONS_DIR.glob("*.sql"))
# information_schema.columns.data_type of the row model's SQL types.
DATA_TYPES = {"timestamptz": "timestamp with time zone"}
DEFAULTS = {c.name: int(c.default) for c in JOB_COLUMNS if c.default is not None}

LEGACY_SCHEMA = """
CREATE TABLE local_training_jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id uuid,
    model_name text NOT NULL,
    dataset_path text,
    status text NOT NULL
        CHECK (status IN ('pending', 'queued', 'running', 'completed', 'failed', 'cancelled')),
    job_token text,
    config jsonb,
    error_message text,
    started_at timestamptz,
    completed_at timestamptz,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    best_checkpoint_score double precision,
    best_checkpoint_step int,
    best_checkpoint_epoch int,
    best_eval_loss double precision,
    metadata jsonb DEFAULT '{}',
    loss_trend text,
    epochs_without_improvement int
);
CREATE TABLE local_training_metrics (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id uuid REFERENCES local_training_jobs (id) ON DELETE CASCADE,
    step int,
    epoch double precision,
    train_loss double precision,
    eval_loss double precision,
    learning_rate double precision,
    grad_norm double precision,
    perplexity double precision,
    train_perplexity double precision,
    "timestamp" timestamptz DEFAULT now()
);
"""
LEGACY_JOB = "6f1c2a4e-0d1b-4c55-9a8e-3f2b1c0d9e01"
LEGACY_OTHER_JOB = "0b7e5d3c-2a19-4f8e-8c6d-5e4f3a2b1c02"
LEGACY_ROWS = f"""
INSERT INTO local_training_jobs (id, user_id, model_name, dataset_path, status, job_token,
    config, started_at, created_at, updated_at, best_checkpoint_score, best_checkpoint_step,
    best_checkpoint_epoch, best_eval_loss, metadata, loss_trend, epochs_without_improvement)
VALUES
    ('{LEGACY_JOB}', gen_random_uuid(), 'gpt2-small', '/data/a.jsonl', 'running', '{TOKEN}',
     '{{"lr": 0.0005, "epochs": 3}}', '2024-04-01T09:00:00Z', '2024-04-01T08:59:00Z',
     '2024-04-01T09:30:00Z', 1.25, 40, 2, 2.5, '{{"source": "old-callback"}}', 'improving', 0),
    ('{LEGACY_OTHER_JOB}', NULL, 'llama-tiny', NULL, 'completed', 'other-token', NULL,
     NULL, '2024-03-01T00:00:00Z', '2024-03-02T00:00:00Z', NULL, NULL, NULL, NULL,
     DEFAULT, NULL, NULL);
INSERT INTO local_training_metrics (job_id, step, epoch, train_loss, eval_loss, "timestamp")
VALUES
    ('{LEGACY_JOB}', 10, 0.5, 3.0, NULL, '2024-04-01T09:05:00Z'),
    ('{LEGACY_JOB}', 10, 0.5, 3.0, 3.2, '2024-04-01T09:05:01Z'),
    ('{LEGACY_JOB}', 20, 1.0, 2.6, NULL, '2024-04-01T09:10:00Z'),
    ('{LEGACY_JOB}', 20, 1.0, 2.6, NULL, '2024-04-01T09:10:00Z'),
    ('{LEGACY_JOB}', 30, 1.5, 2.4, 2.7, '2024-04-01T09:15:00Z'),
    ('{LEGACY_OTHER_JOB}', 10, 1.0, 1.0, 1.1, '2024-03-01T01:00:00Z');
"""


# --- fixtures and helpers ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[LocalPostgres]:
    """One private PostgreSQL server for the module."""
    with LocalPostgres() as pg:
        yield pg


@pytest.fixture
def empty_db(server: LocalPostgres) -> str:
    """A fresh, empty database of the module's server."""
    return server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def db(empty_db: str) -> str:
    """A fresh database with the migrations applied."""
    run_migrations(empty_db)
    return empty_db


@pytest.fixture
def legacy_db(empty_db: str) -> str:
    """A fresh database holding the platform's tables as they are in production."""
    execute(empty_db, LEGACY_SCHEMA + LEGACY_ROWS)
    return empty_db


@pytest.fixture
def job(db: str) -> str:
    """The id of a pending row the platform created, with TOKEN."""
    return create_job(db)


@pytest.fixture
def writer(db: str) -> Iterator[PostgresWriter]:
    pg_writer = PostgresWriter(db)
    yield pg_writer
    pg_writer.close()


def execute(url: str, query: str, params: Any = None) -> list[tuple]:
    """Run SQL in autocommit; return the rows of the last statement (if it has any)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def create_job(url: str, token: str = TOKEN) -> str:
    job_id = str(uuid.uuid4())
    execute(
        url,
        "INSERT INTO local_training_jobs (id, job_token, model_name, status) "
        "VALUES (%s, %s, 'tiny', 'pending')",
        (job_id, token),
    )
    return job_id


def schema(url: str) -> dict[str, list[tuple]]:
    """Columns, indexes (with validity) and constraints of the public schema."""
    return {
        "columns": execute(
            url,
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = 'public' "
            "ORDER BY table_name, ordinal_position",
        ),
        "indexes": execute(
            url,
            "SELECT tablename, indexname, indexdef FROM pg_indexes "
            "WHERE schemaname = 'public' ORDER BY tablename, indexname",
        ),
        "validity": execute(
            url,
            "SELECT indexrelid::regclass::text, indisvalid, indisunique FROM pg_index "
            "WHERE indrelid::regclass::text LIKE 'local_training_%' ORDER BY 1",
        ),
        "constraints": execute(
            url,
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
        ),
    }


def dump(url: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` as JSON, in a stable order."""
    rows = execute(url, f"SELECT to_jsonb(t) FROM {table} t ORDER BY t.id::text")
    return [row[0] for row in rows]


def column_types(url: str, table: str) -> dict[str, str]:
    rows = execute(
        url,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    )
    return dict(rows)


def metric_rows_of(url: str, job_id: str) -> list[tuple]:
    return execute(
        url,
        "SELECT step, train_loss, eval_loss FROM local_training_metrics "
        "WHERE job_id::text = %s ORDER BY step, train_loss",
        (job_id,),
    )


def stored_version(url: str, job_id: str) -> int | None:
    [(version,)] = execute(
        url, "SELECT scoring_version FROM local_training_jobs WHERE id = %s", (job_id,)
    )
    return version


def wait_for_lock_waiters(url: str, count: int, timeout_s: float = 10.0) -> None:
    """Wait until ``count`` sessions of the database wait for a lock."""
    database = url.rsplit("/", 1)[1]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        [(waiting,)] = execute(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock'",
            (database,),
        )
        if waiting >= count:
            return
        time.sleep(0.01)
    pytest.fail(f"{count} sessions never waited for a lock")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- LocalPostgres -----------------------------------------------------------------------


def test_local_server_runs_unprivileged_with_a_password(server: LocalPostgres) -> None:
    [(user, port, fsync)] = execute(
        server.url, "SELECT current_user, current_setting('port'), current_setting('fsync')"
    )
    assert (user, int(port), fsync) == ("ckpt", server.port, "off")
    owner = server.data_dir.stat().st_uid
    assert owner != 0  # PostgreSQL refuses root; as root the folder belongs to 'postgres'
    wrong = server.url.replace(server.password, "wrong-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong)


def test_local_server_names_the_install_when_binaries_are_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install postgresql"):
        LocalPostgres(search_dirs=(str(tmp_path / "none"),))


# --- migrations --------------------------------------------------------------------------


def test_migrate_empty_database_twice(empty_db: str) -> None:
    assert run_migrations(empty_db) == ALL_MIGRATIONS
    first = schema(empty_db)

    assert run_migrations(empty_db) == []
    assert schema(empty_db) == first

    types = column_types(empty_db, "local_training_jobs")
    for column in JOB_COLUMNS:
        assert types[column.name] == DATA_TYPES.get(column.sql_type, column.sql_type)
    types = column_types(empty_db, "local_training_metrics")
    for column in METRIC_COLUMNS:
        assert types[column.name] == DATA_TYPES.get(column.sql_type, column.sql_type)
    recorded = execute(empty_db, "SELECT name, checksum FROM ckpt_schema_migrations ORDER BY 1")
    assert recorded == [(m.name, m.checksum) for m in load_migrations()]
    assert ("local_training_metrics_job_step_idx", True, False) in first["validity"]


def test_migration_files_themselves_are_idempotent(db: str) -> None:
    before = schema(db)
    execute(db, "DELETE FROM ckpt_schema_migrations")  # as if the records were lost

    assert run_migrations(db) == ALL_MIGRATIONS  # every file runs again...
    assert schema(db) == before  # ...and changes nothing


def test_migrate_legacy_database_twice_keeps_every_row_and_value(legacy_db: str) -> None:
    before = {t: dump(legacy_db, t) for t in ("local_training_jobs", "local_training_metrics")}
    legacy_types = {t: column_types(legacy_db, t) for t in before}

    assert run_migrations(legacy_db) == ALL_MIGRATIONS
    first = schema(legacy_db)
    assert run_migrations(legacy_db) == []
    assert schema(legacy_db) == first

    for table, rows in before.items():
        after = dump(legacy_db, table)
        assert len(after) == len(rows)
        for old, new in zip(rows, after, strict=True):
            assert {k: new[k] for k in old} == old  # every legacy value, untouched
            # Added columns empty, or their default (a NOT NULL count such as events_lost).
            assert all(new[k] == DEFAULTS.get(k) for k in set(new) - set(old))
        types = column_types(legacy_db, table)
        assert {k: types[k] for k in legacy_types[table]} == legacy_types[table]  # no retyping
    assert set(JOB_COLUMN_NAMES) <= set(column_types(legacy_db, "local_training_jobs"))
    assert column_types(legacy_db, "local_training_metrics")["job_id"] == "uuid"
    assert ("local_training_metrics_job_step_idx", True, False) in first["validity"]
    assert len(metric_rows_of(legacy_db, LEGACY_JOB)) == 5  # duplicates left as they are


def test_migrate_rebuilds_an_index_left_invalid_by_an_interrupted_build(legacy_db: str) -> None:
    # A concurrent build that fails (here on the legacy duplicates) leaves an INVALID index
    # under the name 002 uses; IF NOT EXISTS alone would keep it.
    with pytest.raises(psycopg.errors.UniqueViolation):
        execute(
            legacy_db,
            "CREATE UNIQUE INDEX CONCURRENTLY local_training_metrics_job_step_idx "
            "ON local_training_metrics (job_id, step)",
        )
    assert ("local_training_metrics_job_step_idx", False, True) in schema(legacy_db)["validity"]

    assert run_migrations(legacy_db) == ALL_MIGRATIONS

    assert ("local_training_metrics_job_step_idx", True, False) in schema(legacy_db)["validity"]


def test_concurrent_index_build_cut_by_lock_timeout_is_rebuilt_next_run(
    legacy_db: str, tmp_path: Path
) -> None:
    only_001 = tmp_path / "only_001"
    only_001.mkdir()
    shutil.copy(MIGRATIONS_DIR / "001_checkpoint_scoring.sql", only_001)
    assert run_migrations(legacy_db, directory=only_001) == ["001_checkpoint_scoring.sql"]

    with psycopg.connect(legacy_db) as reader:
        # An open snapshot (a long report, say): the concurrent build must wait for it.
        reader.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        reader.execute("SELECT count(*) FROM local_training_jobs").fetchall()
        with pytest.raises(MigrationError, match=r"002_indexes\.sql failed") as caught:
            run_migrations(legacy_db, lock_timeout_s=0.3)
        reader.rollback()

    assert caught.value.retry and "rebuilt" in str(caught.value)
    assert ("local_training_metrics_job_step_idx", False, False) in schema(legacy_db)["validity"]
    assert run_migrations(legacy_db) == ALL_MIGRATIONS[1:]  # 002 again, and the later ones
    assert ("local_training_metrics_job_step_idx", True, False) in schema(legacy_db)["validity"]


def test_migrate_gives_up_on_a_lock_instead_of_queueing(legacy_db: str) -> None:
    with psycopg.connect(legacy_db) as dashboard:
        # A long read transaction of the dashboard holds a lock ALTER TABLE must wait for.
        dashboard.execute("SELECT count(*) FROM local_training_jobs").fetchall()
        started = time.monotonic()
        with pytest.raises(MigrationError) as caught:
            run_migrations(legacy_db, lock_timeout_s=0.3)
        elapsed = time.monotonic() - started
        dashboard.rollback()

    assert elapsed < 3
    assert caught.value.retry
    assert "001_checkpoint_scoring.sql" in str(caught.value)
    assert "nothing of it was applied" in str(caught.value)
    assert "scoring_version" not in column_types(legacy_db, "local_training_jobs")
    assert execute(legacy_db, "SELECT name FROM ckpt_schema_migrations") == []
    assert run_migrations(legacy_db) == ALL_MIGRATIONS


def test_concurrent_migration_runs_apply_each_file_once(empty_db: str) -> None:
    results: list[list[str]] = []
    barrier = threading.Barrier(3)

    def migrate() -> None:
        barrier.wait()
        results.append(run_migrations(empty_db))

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(name for result in results for name in result) == ALL_MIGRATIONS
    assert len(results) == 3


def test_migrate_refuses_an_applied_file_that_changed(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    run_migrations(empty_db, directory=folder)
    edited = folder / "001_checkpoint_scoring.sql"
    edited.write_text(edited.read_text() + "\nALTER TABLE local_training_jobs ADD COLUMN x int;\n")

    with pytest.raises(MigrationError, match=r"001_checkpoint_scoring\.sql changed after"):
        run_migrations(empty_db, directory=folder)
    assert "x" not in column_types(empty_db, "local_training_jobs")


def test_migrate_applies_new_files_only_and_keeps_a_failed_one_out(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS_DIR, folder)
    (folder / "003_broken.sql").write_text(
        "ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS extra_a int;\n"
        "ALTER TABLE no_such_table ADD COLUMN IF NOT EXISTS extra_b int;\n"
    )

    with pytest.raises(MigrationError, match=r"003_broken\.sql failed \(42P01\)") as caught:
        run_migrations(db, directory=folder)

    assert not caught.value.retry
    assert "extra_a" not in column_types(db, "local_training_jobs")  # one transaction
    (folder / "003_broken.sql").write_text(
        "ALTER TABLE local_training_jobs ADD COLUMN IF NOT EXISTS extra_a int;\n"
    )
    assert run_migrations(db, directory=folder) == ["003_broken.sql"]


def test_migrate_errors_never_show_the_password(server: LocalPostgres, empty_db: str) -> None:
    wrong = empty_db.replace(server.password, "pw-WRONG-s3cret")
    with pytest.raises(MigrationError) as refused:
        run_migrations(wrong)
    unreachable = f"postgresql://ckpt:pw-WRONG-s3cret@127.0.0.1:{closed_port()}/x"
    with pytest.raises(MigrationError) as down:
        run_migrations(unreachable, connect_timeout_s=2)

    assert "password authentication failed" in str(refused.value)
    assert down.value.retry
    for caught in (refused, down):
        assert "pw-WRONG-s3cret" not in str(caught.value)
        assert server.password not in str(caught.value)


def test_transactional_migration_files_may_not_use_concurrently(tmp_path: Path) -> None:
    (tmp_path / "001_x.sql").write_text("CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON t (a);\n")

    with pytest.raises(MigrationError, match="ckpt:no-transaction"):
        load_migrations(tmp_path)


def test_split_statements_respects_quotes_comments_and_dollar_bodies() -> None:
    # Nested block comments are refused with a clear error (tests/test_migrate.py).
    text = """
    -- a comment; with a semicolon
    SELECT 'a;b', "odd;name" FROM t; /* block; comment */
    CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;
    SELECT 'it''s; fine';
    """
    assert split_statements(text) == [
        """SELECT 'a;b', "odd;name" FROM t""",
        "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql",
        "SELECT 'it''s; fine'",
    ]


# --- PostgresWriter ----------------------------------------------------------------------


def test_write_reads_back_what_was_written(db: str, job: str, writer: PostgresWriter) -> None:
    row, metrics = make_row(3), [make_metric(10, 0.9, job), make_metric(20, 0.7, job)]

    assert writer.write(job, TOKEN, row, metrics) is WriteOutcome.WRITTEN

    stored = writer.read_job(job)
    assert stored is not None
    assert "job_token" not in stored
    assert {k: stored[k] for k in JOB_COLUMN_NAMES} == row
    assert stored["id"] == job and stored["model_name"] == "tiny" and stored["created_at"]
    assert writer.read_metrics(job) == metrics
    assert writer.read_job(str(uuid.uuid4())) is None
    assert writer.read_job("not-a-uuid") is None


def test_same_or_lower_version_is_stale_and_changes_nothing(
    db: str, job: str, writer: PostgresWriter
) -> None:
    writer.write(job, TOKEN, make_row(3), [make_metric(10, 0.9, job)])
    before = (writer.read_job(job), writer.read_metrics(job))

    for version in (3, 2):  # the duplicate write, and an older one
        changed = make_row(version, status="completed", loss=0.1)
        outcome = writer.write(job, TOKEN, changed, [make_metric(10, 0.1, job)])
        assert outcome is WriteOutcome.STALE

    assert (writer.read_job(job), writer.read_metrics(job)) == before


def test_higher_version_replaces_steps_and_keeps_one_row_per_step(
    db: str, job: str, writer: PostgresWriter
) -> None:
    writer.write(job, TOKEN, make_row(1), [make_metric(10, 0.9, job), make_metric(20, 0.8, job)])
    batch = [make_metric(20, 0.6, job), make_metric(30, 0.55, job), make_metric(30, 0.5, job)]

    newer = make_row(2, status="completed", best_score_breakdown=None)
    assert writer.write(job, TOKEN, newer, batch) is WriteOutcome.WRITTEN

    stored = writer.read_job(job)
    assert stored is not None and stored["status"] == "completed"
    assert stored["scoring_version"] == 2 and stored["best_score_breakdown"] is None
    assert metric_rows_of(db, job) == [(10, 0.9, None), (20, 0.6, None), (30, 0.5, None)]


def test_wrong_token_and_missing_row_are_permanent_and_told_apart(
    server: LocalPostgres, db: str, job: str, writer: PostgresWriter
) -> None:
    with pytest.raises(PermanentSinkError, match=f"token does not match for row {job}") as wrong:
        writer.write(job, OTHER_TOKEN, make_row(1), [make_metric(1, 1.0, job)])
    missing_id = str(uuid.uuid4())
    with pytest.raises(PermanentSinkError, match=f"no row with id {missing_id}") as missing:
        writer.write(missing_id, TOKEN, make_row(1), [make_metric(1, 1.0, missing_id)])
    with pytest.raises(PermanentSinkError, match="uuid") as not_uuid:
        writer.write("job-1", TOKEN, make_row(1), [])

    for caught in (wrong, missing, not_uuid):
        for secret in (TOKEN, OTHER_TOKEN, server.password):
            assert secret not in str(caught.value)
    assert stored_version(db, job) is None
    assert metric_rows_of(db, job) == []


def test_a_null_token_on_the_row_never_matches(db: str, writer: PostgresWriter) -> None:
    job_id = str(uuid.uuid4())
    execute(
        db,
        "INSERT INTO local_training_jobs (id, model_name, status) VALUES (%s, 'm', 'pending')",
        (job_id,),
    )
    with pytest.raises(PermanentSinkError, match="token does not match"):
        writer.write(job_id, TOKEN, make_row(1), [])


def test_writes_to_the_legacy_tables_keep_the_platform_values(legacy_db: str) -> None:
    run_migrations(legacy_db)
    before = dump(legacy_db, "local_training_jobs")
    other_metrics = metric_rows_of(legacy_db, LEGACY_OTHER_JOB)
    metrics = [make_metric(10, 2.9, LEGACY_JOB), make_metric(20, 2.5, LEGACY_JOB)]
    writer = PostgresWriter(legacy_db)
    try:
        outcome = writer.write(LEGACY_JOB, TOKEN, make_row(4, status="completed"), metrics)
        stored = writer.read_job(LEGACY_JOB)
        read_back = writer.read_metrics(LEGACY_JOB)
    finally:
        writer.close()

    assert outcome is WriteOutcome.WRITTEN
    assert stored is not None and stored["status"] == "completed"
    after = {row["id"]: row for row in dump(legacy_db, "local_training_jobs")}
    platform_owned = ("user_id", "model_name", "dataset_path", "job_token", "config", "metadata")
    for old in before:
        new = after[old["id"]]
        assert {k: new[k] for k in platform_owned} == {k: old[k] for k in platform_owned}
        if old["id"] == LEGACY_OTHER_JOB:
            assert {k: new[k] for k in old} == old  # another job's row: untouched
    # The duplicated legacy steps now hold one row each; other steps and jobs are untouched.
    assert metric_rows_of(legacy_db, LEGACY_JOB) == [
        (10, 2.9, None),
        (20, 2.5, None),
        (30, 2.4, 2.7),
    ]
    assert metric_rows_of(legacy_db, LEGACY_OTHER_JOB) == other_metrics
    assert [m["job_id"] for m in read_back] == [LEGACY_JOB] * 3  # uuid column, read as text


@pytest.mark.parametrize("first", [5, 6])
def test_racing_writers_meet_on_the_row_lock_and_end_at_6(db: str, job: str, first: int) -> None:
    """``first`` is mid-transaction (row updated, metrics blocked) when the other arrives."""
    writers = {v: PostgresWriter(db) for v in (5, 6)}
    outcomes: dict[int, WriteOutcome] = {}

    def write(version: int) -> None:
        row = make_row(version, loss=version / 10)
        metrics = [make_metric(10, version / 10, job)]
        outcomes[version] = writers[version].write(job, TOKEN, row, metrics)

    with psycopg.connect(db) as holder:
        # Blocks the metric DELETE/INSERT, so the first writer stops after its UPDATE.
        holder.execute("LOCK TABLE local_training_metrics IN SHARE MODE")
        threads = {v: threading.Thread(target=write, args=(v,)) for v in (5, 6)}
        threads[first].start()
        wait_for_lock_waiters(db, 1)
        second = 11 - first
        threads[second].start()
        wait_for_lock_waiters(db, 2)  # the second waits for the first's row lock
        holder.commit()
    for thread in threads.values():
        thread.join(30)
    for pg_writer in writers.values():
        pg_writer.close()

    assert outcomes[6] is WriteOutcome.WRITTEN
    assert outcomes[5] is (WriteOutcome.WRITTEN if first == 5 else WriteOutcome.STALE)
    stored = PostgresWriter(db).read_job(job)
    assert stored is not None and stored["scoring_version"] == 6 and stored["loss"] == 0.6
    assert metric_rows_of(db, job) == [(10, 0.6, None)]


@pytest.mark.parametrize("queue", [(5, 6), (6, 5)])
def test_racing_writers_queued_behind_a_row_lock_end_at_6(
    db: str, job: str, queue: tuple[int, int]
) -> None:
    writers = {v: PostgresWriter(db) for v in (5, 6)}

    def write(version: int) -> None:
        writers[version].write(job, TOKEN, make_row(version, loss=version / 10), [])

    with psycopg.connect(db) as holder:
        holder.execute("SELECT 1 FROM local_training_jobs WHERE id = %s FOR UPDATE", (job,))
        threads = []
        for waiting, version in enumerate(queue, start=1):
            threads.append(threading.Thread(target=write, args=(version,)))
            threads[-1].start()
            wait_for_lock_waiters(db, waiting)
        holder.commit()
    for thread in threads:
        thread.join(30)
    for pg_writer in writers.values():
        pg_writer.close()

    assert stored_version(db, job) == 6
    assert execute(db, "SELECT loss FROM local_training_jobs WHERE id = %s", (job,)) == [(0.6,)]


def test_racing_writers_released_together_end_at_6(db: str) -> None:
    jobs = [create_job(db) for _ in range(8)]
    writers = {v: PostgresWriter(db) for v in (5, 6)}

    for job_id in jobs:
        barrier = threading.Barrier(2)

        def write(version: int, job_id: str = job_id, barrier: threading.Barrier = barrier) -> None:
            row = make_row(version, loss=version / 10)
            barrier.wait()
            writers[version].write(job_id, TOKEN, row, [make_metric(1, version / 10, job_id)])

        threads = [threading.Thread(target=write, args=(v,)) for v in (5, 6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    for pg_writer in writers.values():
        pg_writer.close()

    for job_id in jobs:
        assert stored_version(db, job_id) == 6
        assert metric_rows_of(db, job_id) == [(1, 0.6, None)]


def test_a_held_row_lock_times_out_as_transient(db: str, job: str) -> None:
    writer = PostgresWriter(db, lock_timeout_s=0.2)
    with psycopg.connect(db) as holder:
        holder.execute("SELECT 1 FROM local_training_jobs WHERE id = %s FOR UPDATE", (job,))
        with pytest.raises(TransientSinkError, match="55P03"):
            writer.write(job, TOKEN, make_row(1), [])
    # The lock is gone: the same writer (same connection) now succeeds.
    assert writer.write(job, TOKEN, make_row(1), []) is WriteOutcome.WRITTEN
    writer.close()


def test_failed_metrics_insert_rolls_back_the_row_update(
    db: str, job: str, writer: PostgresWriter
) -> None:
    writer.write(job, TOKEN, make_row(1), [make_metric(10, 0.9, job)])
    execute(
        db,
        "ALTER TABLE local_training_metrics ADD CONSTRAINT positive_loss "
        "CHECK (train_loss IS NULL OR train_loss >= 0)",
    )

    with pytest.raises(PermanentSinkError, match="23514"):
        writer.write(job, TOKEN, make_row(2), [make_metric(10, 0.5, job), make_metric(20, -1, job)])

    assert stored_version(db, job) == 1  # the UPDATE of the same flush was rolled back
    assert metric_rows_of(db, job) == [(10, 0.9, None)]
    good = [make_metric(10, 0.5, job), make_metric(20, 0.4, job)]
    assert writer.write(job, TOKEN, make_row(2), good) is WriteOutcome.WRITTEN


@pytest.mark.parametrize(
    ("sqlstate", "error"),
    [
        ("40001", TransientSinkError),  # serialization_failure
        ("40P01", TransientSinkError),  # deadlock_detected
        ("57014", TransientSinkError),  # query_canceled (statement_timeout)
        ("42703", PermanentSinkError),  # undefined_column
        ("23514", PermanentSinkError),  # check_violation
    ],
)
def test_server_errors_are_classified_and_roll_back(
    db: str, job: str, writer: PostgresWriter, sqlstate: str, error: type[Exception]
) -> None:
    execute(
        db,
        f"""
        CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'induced failure' USING ERRCODE = '{sqlstate}'; END $$;
        CREATE TRIGGER fail_insert BEFORE INSERT ON local_training_metrics
            FOR EACH ROW EXECUTE FUNCTION fail_insert();
        """,
    )

    with pytest.raises(error, match=sqlstate):
        writer.write(job, TOKEN, make_row(1), [make_metric(10, 0.9, job)])

    assert stored_version(db, job) is None


def test_unreachable_server_is_transient_and_hides_the_password() -> None:
    writer = PostgresWriter(
        f"postgresql://ckpt:pw-SECRET-1@127.0.0.1:{closed_port()}/db", connect_timeout_s=2
    )
    with pytest.raises(TransientSinkError) as caught:
        writer.write(str(uuid.uuid4()), TOKEN, make_row(1), [])
    assert "pw-SECRET-1" not in str(caught.value) and TOKEN not in str(caught.value)


def test_crashed_server_is_transient_and_retrying_write_succeeds_once_it_is_back(
    server: LocalPostgres, db: str, job: str, writer: PostgresWriter
) -> None:
    writer.write(job, TOKEN, make_row(1), [])
    server.kill()
    waits: list[float] = []

    def restart_while_waiting(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # two attempts have failed: bring the server back
            server.start()

    try:
        with pytest.raises(TransientSinkError):
            writer.write(job, TOKEN, make_row(2), [])
        outcome = retrying_write(
            writer, job, TOKEN, make_row(2), [], 5, 0.01, sleep=restart_while_waiting
        )
    finally:
        if not server.running:
            server.start()

    assert outcome is WriteOutcome.WRITTEN and len(waits) == 2
    assert stored_version(db, job) == 2


def test_writer_from_settings_builds_a_postgres_writer(db: str, job: str) -> None:
    for url in (db, db.replace("postgresql://", "postgres://", 1)):
        writer = writer_from_settings(Settings(sink_url=url))
        assert isinstance(writer, PostgresWriter)
        assert writer.read_job(job) is not None
        writer.close()
    for bad in ("postgresql://u:pw-SECRET@h/db?nosuch=1", "postgresql://u:pw-SECRET@[h/db"):
        with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as caught:
            writer_from_settings(Settings(sink_url=bad))
        assert "pw-SECRET" not in str(caught.value)


def test_cli_migrate_on_a_production_copy_twice(server: LocalPostgres, legacy_db: str) -> None:
    runner = CliRunner()

    first = runner.invoke(main, ["migrate", legacy_db])
    second = runner.invoke(main, ["migrate", legacy_db])
    wrong = runner.invoke(main, ["migrate", legacy_db.replace(server.password, "pw-WRONG-9")])

    assert first.exit_code == 0 and ", ".join(ALL_MIGRATIONS) in first.output
    assert second.exit_code == 0 and "nothing to apply" in second.output
    assert wrong.exit_code == 2 and "password authentication failed" in wrong.output
    assert "pw-WRONG-9" not in wrong.output
