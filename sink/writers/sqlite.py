"""The embedded default sink: one SQLite file (``CKPT_SINK=sqlite:////abs/path.db``).

Each operation opens its own connection: cheap for SQLite, and safe across threads and the
fork of an RQ work horse, where a shared connection is not.

The file is created by the first write, not by reading: the read-only ``status`` of a sink
that does not exist yet finds no row and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from scorer_worker.errors import PermanentSinkError, TransientSinkError
from sink.rows import JOB_COLUMNS, METRIC_COLUMN_NAMES, METRIC_COLUMNS, Column

from .base import (
    JOBS_TABLE,
    JSON_COLUMNS,
    METRICS_TABLE,
    READ_COLUMNS,
    WriteOutcome,
    check_write_args,
    guarded_update_params,
    guarded_update_sql,
    one_row_per_step,
    outcome_without_match,
    quote_ident,
)

# PostgreSQL types of the row model, as SQLite stores them: jsonb as JSON text and
# timestamptz as ISO 8601 text, so values read back equal what was written.
SQLITE_TYPES = {
    "text": "TEXT",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "double precision": "REAL",
    "timestamptz": "TEXT",
    "jsonb": "TEXT",
}
# The columns the platform owns; the sink never updates them.
IDENTITY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "TEXT PRIMARY KEY"),
    ("job_token", "TEXT"),
    ("model_name", "TEXT"),
    ("created_at", "TEXT"),
)
_TRANSIENT_MARKERS = ("locked", "busy", "disk i/o error")


class SqliteWriter:
    """Writes job rows and metric rows to a SQLite file.

    Args:
        path: the database file; created by ``ensure_schema`` (or the first write) if missing.
        timeout_s: how long to wait for another process's write lock before failing with
            TransientSinkError.
    """

    def __init__(self, path: str | Path, *, timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self._update_sql = guarded_update_sql(lambda name: f":{name}", quote_ident)
        self._conn: sqlite3.Connection | None = None
        self._schema_ready = False

    def ensure_schema(self) -> None:
        """Create both tables if missing and add any row-model column an older file lacks.

        Raises:
            TransientSinkError: the file is locked by another writer.
            PermanentSinkError: the file cannot be opened or altered.
        """
        with self._connect() as conn:
            # WAL lets readers (the status command) proceed during a write; it is a
            # property of the file, and cannot be switched inside a transaction.
            conn.execute("PRAGMA journal_mode=WAL")
            with _transaction(conn):
                conn.execute(_create_jobs_sql())
                conn.execute(_create_metrics_sql())
                _add_missing_columns(conn, JOBS_TABLE, JOB_COLUMNS)
                _add_missing_columns(conn, METRICS_TABLE, METRIC_COLUMNS)
        self._schema_ready = True

    def _ensure_schema_once(self) -> None:
        # Writes create the file and its tables if nothing did before (see the module note).
        if not self._schema_ready:
            self.ensure_schema()

    def create_job(self, job_id: str, job_token: str, model_name: str = "demo") -> bool:
        """Insert the ``pending`` row the platform would create.

        Returns:
            True if inserted, False if the row already exists with the same token.

        Raises:
            PermanentSinkError: the row exists with another token (never shown).
            TransientSinkError: the file is locked by another writer.
        """
        self._ensure_schema_once()
        with self._connect() as conn, _transaction(conn):
            if _row_exists(conn, job_id, job_token):
                return False
            if _row_exists(conn, job_id):
                raise PermanentSinkError(f"row {job_id} exists with another job token")
            conn.execute(
                f"INSERT INTO {JOBS_TABLE} (id, job_token, model_name, created_at, status) "
                "VALUES (?, ?, ?, ?, 'pending')",
                (job_id, job_token, model_name, datetime.now(UTC).isoformat()),
            )
            return True

    def delete_pending_job(self, job_id: str, job_token: str) -> bool:
        """Delete a row :meth:`create_job` inserted, unless the sink has written it since.

        It undoes a registration that failed half-way (``register --create-row`` when Redis
        refuses the registration), so a refused command leaves nothing behind.

        Returns:
            True if a row was deleted.
        """
        if not self.path.exists():
            return False
        with self._connect() as conn, _transaction(conn):
            deleted = conn.execute(
                f"DELETE FROM {JOBS_TABLE} WHERE id = ? AND job_token = ? "
                "AND status = 'pending' AND scoring_version IS NULL",
                (job_id, job_token),
            )
            return deleted.rowcount > 0

    def write(
        self, job_id: str, job_token: str, row: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> WriteOutcome:
        """Write the row and its metric rows in one transaction; see ``base.Writer.write``."""
        check_write_args(job_id, row, metrics)
        self._ensure_schema_once()
        params = guarded_update_params(job_id, job_token, _encode_json(row))
        with self._connect() as conn, _transaction(conn):
            if conn.execute(self._update_sql, params).rowcount == 0:
                return outcome_without_match(
                    job_id,
                    token_matches=_row_exists(conn, job_id, job_token),
                    row_exists=_row_exists(conn, job_id),
                )
            _replace_metrics(conn, one_row_per_step(metrics))
            return WriteOutcome.WRITTEN

    def read_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the row without ``job_token`` (jsonb decoded), or None if absent."""
        if not self._schema_ready and not self.path.exists():
            return None  # reading must not create the file
        columns = ", ".join(quote_ident(name) for name in READ_COLUMNS)
        with self._connect() as conn:
            found = conn.execute(
                f"SELECT {columns} FROM {JOBS_TABLE} WHERE id = ?", (job_id,)
            ).fetchone()
        return _decode_json(dict(zip(READ_COLUMNS, found, strict=True))) if found else None

    def read_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Return the job's metric rows ordered by step."""
        if not self._schema_ready and not self.path.exists():
            return []  # reading must not create the file
        columns = ", ".join(quote_ident(name) for name in METRIC_COLUMN_NAMES)
        with self._connect() as conn:
            found = conn.execute(
                f"SELECT {columns} FROM {METRICS_TABLE} WHERE job_id = ? ORDER BY step",
                (job_id,),
            ).fetchall()
        return [dict(zip(METRIC_COLUMN_NAMES, values, strict=True)) for values in found]

    def close(self) -> None:
        """Close the connection (the next operation opens a new one)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One connection for the writer's life (a sink task's jobs): opening one per write
        # cost as much as the write.
        if self._conn is None:
            try:
                # isolation_level=None: transactions are opened explicitly (BEGIN IMMEDIATE).
                conn = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
                # In WAL mode NORMAL syncs at checkpoints, not every commit: a power cut may
                # lose the last writes, which the next flush rewrites (Redis holds the state).
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise _sink_error(exc) from None
            self._conn = conn
        try:
            yield self._conn
        except sqlite3.Error as exc:
            self.close()  # start afresh: the connection may be unusable
            raise _sink_error(exc) from None


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a busy file fails (transiently) here,
    # not half-way through, and the guard's read and the update see one snapshot.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _sink_error(exc: sqlite3.Error) -> Exception:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and any(
        marker in text.lower() for marker in _TRANSIENT_MARKERS
    ):
        return TransientSinkError(f"SQLite sink busy: {text}")
    return PermanentSinkError(f"SQLite sink error ({type(exc).__name__}): {text}")


def _column_sql(column: Column) -> str:
    # NOT NULL needs the default here too: SQLite adds such a column only with one.
    declared = "" if column.default is None else f" NOT NULL DEFAULT {column.default}"
    return f"{quote_ident(column.name)} {SQLITE_TYPES[column.sql_type]}{declared}"


def _create_jobs_sql() -> str:
    identity = [f"{quote_ident(name)} {decl}" for name, decl in IDENTITY_COLUMNS]
    columns = ", ".join([*identity, *(_column_sql(c) for c in JOB_COLUMNS)])
    return f"CREATE TABLE IF NOT EXISTS {JOBS_TABLE} ({columns})"


_REPLACE_METRICS_SQL = (
    f"INSERT OR REPLACE INTO {METRICS_TABLE} "
    f"({', '.join(quote_ident(name) for name in METRIC_COLUMN_NAMES)}) "
    f"VALUES ({', '.join(f':{name}' for name in METRIC_COLUMN_NAMES)})"
)


def _create_metrics_sql() -> str:
    columns = ", ".join(_column_sql(c) for c in METRIC_COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {METRICS_TABLE} ({columns}, PRIMARY KEY (job_id, step))"


def _add_missing_columns(conn: sqlite3.Connection, table: str, columns: tuple[Column, ...]) -> None:
    present = {info[1] for info in conn.execute(f"PRAGMA table_info({table})")}
    for column in columns:
        if column.name not in present:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {_column_sql(column)}")


def _row_exists(conn: sqlite3.Connection, job_id: str, job_token: str | None = None) -> bool:
    if job_token is None:
        query, params = f"SELECT 1 FROM {JOBS_TABLE} WHERE id = ?", (job_id,)
    else:
        query = f"SELECT 1 FROM {JOBS_TABLE} WHERE id = ? AND job_token = ?"
        params = (job_id, job_token)
    return conn.execute(query, params).fetchone() is not None


def _replace_metrics(conn: sqlite3.Connection, metrics: list[dict[str, Any]]) -> None:
    # REPLACE deletes the row at the same (job_id, step) and inserts: one statement per step.
    conn.executemany(_REPLACE_METRICS_SQL, metrics)


def _encode_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: json.dumps(value) if name in JSON_COLUMNS and value is not None else value
        for name, value in row.items()
    }


def _decode_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: json.loads(value) if name in JSON_COLUMNS and value is not None else value
        for name, value in row.items()
    }
