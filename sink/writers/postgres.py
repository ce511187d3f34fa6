"""The PostgreSQL sink (``CKPT_SINK=postgresql://...``), with psycopg 3.

A write is one transaction: the guarded UPDATE of the job row and, only if it matched, the
replacement of the metric rows of the written steps. Concurrent writers of one job are
serialised by the row lock the UPDATE takes; under READ COMMITTED a writer that waited
re-checks the version guard against the row the other one committed, so a lower version
can never land after a higher one.

The schema is not created here: apply ``sink/migrations`` first (``sink.migrate``).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote
from uuid import UUID

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from producer.redaction import mask_url, redact
from producer.sockets import KEEPALIVE_DEFAULTS
from scorer_worker.errors import ConfigError, PermanentSinkError, SinkError, TransientSinkError
from sink.rows import METRIC_COLUMN_NAMES

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

# SQLSTATE classes a retry can cure: connection exceptions, transaction rollbacks
# (serialization failure 40001, deadlock 40P01), insufficient resources (too many
# connections), operator intervention (statement timeout, server shutting down) and system
# errors; plus lock_not_available, which lock_timeout raises, and the end of a session the
# server found idle inside a transaction (25P03: a client cut off mid-transaction).
TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
TRANSIENT_SQLSTATES = frozenset({"55P03", "25P03"})
APPLICATION_NAME = "ckpt-pipeline sink"


class PostgresWriter:
    """Writes job rows and metric rows to PostgreSQL (the platform's tables, or a copy).

    One connection per writer, opened on first use and reopened after it is lost; the
    writer is safe to share between threads (calls are serialised). Server-side prepared
    statements are off so that transaction-mode poolers (PgBouncer, Supavisor) work.

    Args:
        url: ``postgresql://user:password@host:port/db?...``; the password is never shown.
        connect_timeout_s: how long to wait for a connection (libpq's minimum is 2 s).
        lock_timeout_s: how long a write waits for a row lock (another writer, a
            dashboard transaction) before failing with TransientSinkError.
        statement_timeout_s: the longest any one statement may run.
        idle_in_transaction_timeout_s: the server ends a transaction left waiting on its
            client this long (a client cut off mid-transaction), which frees its row locks.
        keepalive: TCP keepalive and user timeout (``producer.sockets`` names), so that a
            read from a server behind a blackholed link fails instead of waiting for hours.

    Raises:
        ConfigError: the URL does not parse (shown masked).
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 5,
        lock_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
        idle_in_transaction_timeout_s: float = 10.0,
        keepalive: dict[str, int] | None = None,
    ) -> None:
        self._url = url
        self._secrets = url_secrets(url)
        try:
            conninfo_to_dict(url)
        except psycopg.Error as exc:
            # libpq quotes the whole URL in some of these messages: mask it there too.
            reason = mask_url(redact(str(exc).strip(), self._secrets))
            raise ConfigError(
                f"CKPT_SINK={mask_url(url)!r} is not a valid PostgreSQL URL: {reason}"
            ) from None
        self.connect_timeout_s = connect_timeout_s
        self._timeouts = (
            _ms(lock_timeout_s),
            _ms(statement_timeout_s),
            _ms(idle_in_transaction_timeout_s),
        )
        self._keepalive = _libpq_keepalive(**(keepalive or {}))
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._update_sql = guarded_update_sql(lambda name: f"%({name})s", quote_ident)

    def write(
        self, job_id: str, job_token: str, row: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> WriteOutcome:
        """Write the row and its metric rows in one transaction; see ``base.Writer.write``."""
        check_write_args(job_id, row, metrics)
        params = guarded_update_params(job_id, job_token, _adapt_json(row))
        with self._transaction(job_token) as conn:
            if conn.execute(self._update_sql, params).rowcount == 0:
                return _outcome_without_match(conn, job_id, job_token)
            _replace_metrics(conn, job_id, one_row_per_step(metrics))
            return WriteOutcome.WRITTEN

    def read_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the row's ``READ_COLUMNS`` (never the token), or None if there is none.

        Timestamps come back as ISO 8601 UTC strings and uuids as strings, as written.
        """
        columns = ", ".join(quote_ident(name) for name in READ_COLUMNS)
        query = f"SELECT {columns} FROM {JOBS_TABLE} WHERE id = %s"
        found = self._read(query, job_id)
        return dict(zip(READ_COLUMNS, map(_plain, found[0]), strict=True)) if found else None

    def read_metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Return the job's metric rows ordered by step (values as ``read_job`` gives them)."""
        columns = ", ".join(quote_ident(name) for name in METRIC_COLUMN_NAMES)
        query = f"SELECT {columns} FROM {METRICS_TABLE} WHERE job_id = %s ORDER BY step"
        return [
            dict(zip(METRIC_COLUMN_NAMES, map(_plain, r), strict=True))
            for r in self._read(query, job_id)
        ]

    def close(self) -> None:
        """Close the connection; a later call would open a new one."""
        with self._lock:
            self._discard()

    def _read(self, query: str, job_id: str) -> list[tuple[Any, ...]]:
        try:
            with self._transaction() as conn:
                return conn.execute(query, (job_id,)).fetchall()
        except _InvalidInput:
            # In a uuid-keyed table an id that is not a uuid names no row.
            return []

    @contextlib.contextmanager
    def _transaction(self, *secrets: str) -> Iterator[psycopg.Connection]:
        """Yield the connection inside a transaction with this writer's timeouts.

        psycopg errors become SinkErrors; a lost connection is dropped so the next call
        (a retry) reconnects.
        """
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    # SET LOCAL semantics: the limits end with the transaction, so a pooler
                    # never hands them to another client.
                    conn.execute(
                        "SELECT set_config('lock_timeout', %s, true), "
                        "set_config('statement_timeout', %s, true), "
                        "set_config('idle_in_transaction_session_timeout', %s, true)",
                        self._timeouts,
                    )
                    yield conn
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    self._discard()
                raise sink_error(exc, (*self._secrets, *secrets)) from None

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            self._discard()
        if self._conn is None:
            self._conn = psycopg.connect(
                self._url,
                autocommit=True,  # transactions are explicit: no idle-in-transaction reads
                connect_timeout=max(2, math.ceil(self.connect_timeout_s)),
                prepare_threshold=None,
                application_name=APPLICATION_NAME,
                **self._keepalive,
            )
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def _libpq_keepalive(**keepalive: int) -> dict[str, int]:
    # libpq's spelling of producer.sockets' options (ignored on a Unix socket).
    given = {**KEEPALIVE_DEFAULTS, **keepalive}
    return {
        "keepalives": 1,
        "keepalives_idle": given["idle_s"],
        "keepalives_interval": given["interval_s"],
        "keepalives_count": given["count"],
        "tcp_user_timeout": given["user_timeout_ms"],
    }


def sink_error(exc: psycopg.Error, secrets: tuple[str, ...] = ()) -> SinkError:
    """Classify a psycopg error as transient or permanent, with a message free of secrets.

    Args:
        exc: the error psycopg raised.
        secrets: strings to hide (the URL's password, the job token).

    Returns:
        TransientSinkError for a lost or refused connection, a timeout, a serialization
        failure or deadlock, a lock timeout or a server shutting down; PermanentSinkError
        for everything else (unknown column, constraint violation, bad input).
    """
    transient = is_transient(exc)
    code = exc.sqlstate or type(exc).__name__
    text = (exc.diag.message_primary if exc.sqlstate else None) or str(exc)
    # The first line only: DETAIL lines may quote a failing row, token included.
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    message = redact(f"PostgreSQL sink ({code}): {text}", secrets)
    if transient:
        return TransientSinkError(message)
    if isinstance(exc, pg_errors.InvalidTextRepresentation):
        return _InvalidInput(message)
    return PermanentSinkError(message)


def is_transient(exc: psycopg.Error) -> bool:
    """Tell whether a retry may cure ``exc`` (see TRANSIENT_SQLSTATE_CLASSES)."""
    if exc.sqlstate is None:
        # No answer from the server: refused or lost connection, client-side timeout.
        return isinstance(exc, psycopg.OperationalError)
    return exc.sqlstate in TRANSIENT_SQLSTATES or exc.sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES


def url_secrets(url: str) -> tuple[str, ...]:
    """Return the URL's password as written and decoded (both must be hidden in messages)."""
    try:
        password = conninfo_to_dict(url).get("password")
    except psycopg.Error:
        password = None
    if not password:
        return ()
    return tuple({str(password), quote(str(password), safe=""), quote(str(password))})


def _outcome_without_match(conn: psycopg.Connection, job_id: str, job_token: str) -> WriteOutcome:
    query = f"SELECT job_token = %s FROM {JOBS_TABLE} WHERE id = %s"
    found = conn.execute(query, (job_token, job_id)).fetchall()
    return outcome_without_match(
        job_id, token_matches=bool(found and found[0][0]), row_exists=bool(found)
    )


def _replace_metrics(conn: psycopg.Connection, job_id: str, metrics: list[dict[str, Any]]) -> None:
    # Delete then insert, not upsert: the legacy table holds duplicate (job_id, step) rows
    # and has no unique constraint for ON CONFLICT. Parameters travel untyped, so job_id
    # binds to the column's own type (text here, uuid in the platform's legacy table).
    if not metrics:
        return
    conn.execute(
        f"DELETE FROM {METRICS_TABLE} WHERE job_id = %s AND step = ANY(%s)",
        (job_id, [metric["step"] for metric in metrics]),
    )
    columns = ", ".join(quote_ident(name) for name in METRIC_COLUMN_NAMES)
    values = ", ".join(f"%({name})s" for name in METRIC_COLUMN_NAMES)
    with conn.cursor() as cursor:
        cursor.executemany(f"INSERT INTO {METRICS_TABLE} ({columns}) VALUES ({values})", metrics)


class _InvalidInput(PermanentSinkError):
    """A value the column's type rejects (22P02), e.g. a job id that is not a uuid."""


def _adapt_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        name: Jsonb(value) if name in JSON_COLUMNS and value is not None else value
        for name, value in row.items()
    }


def _plain(value: Any) -> Any:
    """Turn what psycopg returns into what the row model holds."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, Decimal):  # a legacy numeric column
        return float(value)
    return value


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
