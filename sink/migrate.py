"""Apply ``sink/migrations/*.sql`` to a PostgreSQL database, each once, safely on a live one.

Applied files are recorded in ``ckpt_schema_migrations`` (name, checksum, applied_at), so a
second run applies nothing; the SQL is idempotent as well, so applying a file again (by
hand, or after the record was lost) changes nothing either. Each file runs in its own
transaction, except files marked ``-- ckpt:no-transaction`` (``CREATE INDEX CONCURRENTLY``
cannot run in one), whose statements run one by one in autocommit. ``lock_timeout`` bounds
every lock wait, so a migration gives up instead of queueing behind a long dashboard
transaction while the dashboard's own queries queue behind it.

Use a direct (or session-pooled) connection: the run holds a session-level advisory lock so
two concurrent runs do not interleave, which a transaction-mode pooler would not keep.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlparse
import sqlparse.lexer
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from sqlparse import tokens as T

from producer.redaction import mask_url, redact
from scorer_worker.errors import PipelineError
from sink.writers.postgres import is_transient, url_secrets

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
TRACKING_TABLE = "ckpt_schema_migrations"
NO_TRANSACTION_MARKER = re.compile(r"^--\s*ckpt:no-transaction\s*$", re.MULTILINE)
# Any fixed 64-bit number shared by every run; pg_advisory_lock keys are per database.
ADVISORY_LOCK_KEY = 0x636B_7074_6D69_6772  # "ckptmigr"
LOCK_POLL_S = 0.05
_CONCURRENT_INDEX = re.compile(
    r"^CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+IF\s+NOT\s+EXISTS\s+"
    r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)\s+ON\b",
    re.IGNORECASE,
)
POSTGRES_URL_PREFIXES = ("postgresql://", "postgres://")


class MigrationError(PipelineError):
    """A migration could not be applied.

    Attributes:
        retry: True when running again later may succeed (a lock wait timed out, the
            database was unreachable); False when something must be fixed first.
    """

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Migration:
    """One ``*.sql`` file: its statements (comments removed) and its checksum."""

    name: str
    statements: tuple[str, ...]
    checksum: str
    transactional: bool


def load_migrations(directory: str | Path = MIGRATIONS_DIR) -> list[Migration]:
    """Read every ``*.sql`` file of ``directory`` in name order.

    Raises:
        MigrationError: a file uses CONCURRENTLY without the no-transaction marker (it
            would fail half-way inside a transaction), or spells something the splitter
            could cut in the wrong place (see :func:`split_statements`).
    """
    migrations = []
    for path in sorted(Path(directory).glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        transactional = NO_TRANSACTION_MARKER.search(text) is None
        try:
            statements = tuple(split_statements(text))
        except ValueError as exc:
            raise MigrationError(f"{path.name}: {exc}") from None
        if transactional and any(re.search(r"\bCONCURRENTLY\b", s, re.I) for s in statements):
            raise MigrationError(
                f"{path.name} uses CONCURRENTLY, which cannot run in a transaction: move it "
                "to a file whose first line is `-- ckpt:no-transaction`"
            )
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        migrations.append(Migration(path.name, statements, checksum, transactional))
    return migrations


def check_database_url(database_url: str) -> None:
    """Refuse a URL that does not name its server and database, before anything connects.

    libpq fills whatever a URL leaves out from ``PG*`` variables and its defaults: an empty
    URL (``migrate "$DATABASE_URL"`` with the variable unset) or ``postgresql:///db`` reaches
    the machine's own PostgreSQL, which is never the database the operator meant to migrate.

    Raises:
        MigrationError: the URL is empty, not a ``postgresql://`` URL, or names no host or
            no database. The message holds no password.
    """
    url = database_url.strip()
    if not url:
        raise MigrationError(
            "DATABASE_URL is empty (is the variable set?): give "
            "postgresql://user:password@host:port/database"
        )
    if not url.startswith(POSTGRES_URL_PREFIXES):
        raise MigrationError(
            f"{mask_url(url)!r} is not a PostgreSQL URL: give "
            "postgresql://user:password@host:port/database"
        )
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        raise MigrationError(f"{mask_url(url)!r} is not a valid PostgreSQL URL") from None
    hosts = str(parts.get("host") or parts.get("hostaddr") or "")
    # "h1,,h2" has an empty member, which libpq also fills with its default host.
    if not hosts or not all(host.strip() for host in hosts.split(",")):
        raise MigrationError(
            f"{mask_url(url)!r} names no host: libpq would fall back to its defaults "
            "(this machine's PostgreSQL); give postgresql://user:password@host:port/database"
        )
    if not parts.get("dbname"):
        raise MigrationError(
            f"{mask_url(url)!r} names no database: give "
            "postgresql://user:password@host:port/database"
        )


def run_migrations(
    database_url: str,
    *,
    directory: str | Path = MIGRATIONS_DIR,
    lock_timeout_s: float = 5.0,
    connect_timeout_s: float = 10.0,
) -> list[str]:
    """Apply the migrations the database has not recorded yet, in name order.

    Args:
        database_url: ``postgresql://user:password@host:port/db``; never shown unmasked.
        directory: the folder of ``*.sql`` files (the package's own by default).
        lock_timeout_s: the longest any statement waits for a lock before the run gives up.
        connect_timeout_s: how long to wait for the connection.

    Returns:
        The names of the files applied by this run (empty when the schema is current).

    Raises:
        MigrationError: the URL names no host or database (see :func:`check_database_url`),
            a recorded file's checksum changed, a statement failed, a lock was
            not granted in time or the database is unreachable. A transactional file that
            fails leaves nothing behind; the message holds no password.
    """
    check_database_url(database_url)
    migrations = load_migrations(directory)
    secrets = url_secrets(database_url)
    with _errors_as_migration_error("connecting to " + mask_url(database_url), secrets):
        conn = psycopg.connect(
            database_url,
            autocommit=True,
            connect_timeout=max(2, round(connect_timeout_s)),
            prepare_threshold=None,
            application_name="ckpt-pipeline migrate",
        )
    with conn:
        with _errors_as_migration_error("preparing", secrets, lock_timeout_s):
            # Session-wide: covers the advisory lock, each transaction and each CONCURRENTLY
            # statement. Files that set a default of their own keep this one.
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (_ms(lock_timeout_s),))
        with _advisory_lock(conn, secrets, lock_timeout_s):
            with _errors_as_migration_error("reading " + TRACKING_TABLE, secrets, lock_timeout_s):
                applied = _recorded(conn)
            _check_unchanged(migrations, applied)
            done = []
            for migration in migrations:
                if migration.name in applied:
                    continue
                with _errors_as_migration_error(
                    migration.name, secrets, lock_timeout_s, migration.transactional
                ):
                    _apply(conn, migration)
                done.append(migration.name)
            return done


def split_statements(text: str) -> list[str]:
    """Split SQL text into its statements, without their comments or final semicolons.

    sqlparse does the splitting: quoted strings, quoted identifiers and dollar-quoted bodies
    (``DO $$ ... $$``, function bodies) are kept whole, so a semicolon or ``--`` inside them
    does not split.

    Raises:
        ValueError: the text spells something sqlparse reads otherwise than PostgreSQL does
            (see :func:`_refuse_misread`), so its statements could be cut in the wrong place.
    """
    statements = []
    for statement in sqlparse.split(text):
        kept = []
        # The lexer, not sqlparse.format(strip_comments=True): format groups the tokens and
        # refuses a statement of more than 10,000 (a seed INSERT of a few thousand rows).
        for ttype, value in sqlparse.lexer.tokenize(statement):
            _refuse_misread(ttype, value)
            kept.append(" " if ttype in T.Comment else value)
        # The semicolon goes after the comments: sqlparse gives a comment on the semicolon's
        # line to its statement, so the semicolon is not last before (strip_semicolon misses it).
        bare = "".join(kept).strip().removesuffix(";").rstrip()
        if bare:
            statements.append(bare)
    return statements


def _refuse_misread(ttype: Any, value: str) -> None:
    """Refuse a token sqlparse reads otherwise than PostgreSQL, rather than run a wrong split.

    sqlparse serves several dialects: it takes ``# `` for a MySQL comment (PostgreSQL's XOR
    operator), ``\\'`` for an escaped quote in any string (PostgreSQL: only in ``E''``), and
    ends ``/* ... */`` at the first ``*/`` (PostgreSQL nests block comments).
    """
    if ttype in T.Comment.Single and value.startswith("#"):
        raise ValueError(f"{value.strip()[:40]!r}: write the # operator without a space after it")
    if ttype in T.Comment.Multiline and "/*" in value[2:]:
        raise ValueError(f"{value[:40]!r}: nested block comments are not supported")
    if ttype in T.String and ("\\'" in value or '\\"' in value):
        raise ValueError(f"{value[:40]!r}: a backslash before a quote; write '' for a quote")


def _recorded(conn: psycopg.Connection) -> dict[str, str]:
    with conn.transaction():
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (TRACKING_TABLE,)).fetchone()
        if not (exists and exists[0]):
            table = sql.Identifier(TRACKING_TABLE)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (name text PRIMARY KEY, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(table)
            )
            # On Supabase every public table is reachable through the REST API; with row
            # level security on and no policy, only the owner and the service role see it.
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
        rows = conn.execute(
            sql.SQL("SELECT name, checksum FROM {}").format(sql.Identifier(TRACKING_TABLE))
        ).fetchall()
    return dict(rows)


def _check_unchanged(migrations: list[Migration], applied: dict[str, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.name)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"{migration.name} changed after it was applied (checksum {recorded[:12]} "
                f"recorded, {migration.checksum[:12]} now): never edit an applied migration, "
                "add a new file instead"
            )


def _apply(conn: psycopg.Connection, migration: Migration) -> None:
    record = sql.SQL("INSERT INTO {} (name, checksum) VALUES (%s, %s)").format(
        sql.Identifier(TRACKING_TABLE)
    )
    if migration.transactional:
        with conn.transaction():
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(record, (migration.name, migration.checksum))
        return
    for statement in migration.statements:
        _drop_invalid_index(conn, statement)
        conn.execute(statement)
    conn.execute(record, (migration.name, migration.checksum))


def _drop_invalid_index(conn: psycopg.Connection, statement: str) -> None:
    """Drop the INVALID index an interrupted concurrent build of ``statement`` left.

    IF NOT EXISTS would keep such an index as it is: present, never used by queries, yet
    maintained on every write. Dropping it is safe: it holds nothing a query can read.
    """
    match = _CONCURRENT_INDEX.match(statement)
    if not match:
        return
    name = match.group(1)
    found = conn.execute(
        "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%s)", (name,)
    ).fetchone()
    if found and found[0]:
        identifier = sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(identifier))


@contextlib.contextmanager
def _advisory_lock(
    conn: psycopg.Connection, secrets: tuple[str, ...], lock_timeout_s: float
) -> Iterator[None]:
    """Hold the database's migration lock, polling for it for up to ``lock_timeout_s``.

    Polled, not waited for in the server: a session blocked in ``pg_advisory_lock`` holds a
    snapshot, and the other run's CREATE INDEX CONCURRENTLY would wait for that snapshot
    while it waits for the lock: a deadlock.
    """
    deadline = time.monotonic() + lock_timeout_s
    with _errors_as_migration_error("taking the migration lock", secrets, lock_timeout_s):
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,)).fetchone()[
            0
        ]:
            if time.monotonic() >= deadline:
                raise MigrationError(
                    f"another migration run still holds the lock after {lock_timeout_s:g} s; "
                    "run it again when that one is done",
                    retry=True,
                )
            time.sleep(LOCK_POLL_S)
    try:
        yield
    finally:
        if not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))


@contextlib.contextmanager
def _errors_as_migration_error(
    step: str,
    secrets: tuple[str, ...],
    lock_timeout_s: float = 0.0,
    transactional: bool = True,
) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        raise _migration_error(exc, step, secrets, lock_timeout_s, transactional) from None


def _migration_error(
    exc: psycopg.Error,
    step: str,
    secrets: tuple[str, ...],
    lock_timeout_s: float,
    transactional: bool,
) -> MigrationError:
    code = exc.sqlstate or type(exc).__name__
    text = (exc.diag.message_primary if exc.sqlstate else None) or str(exc) or code
    text = text.strip().splitlines()[0]
    if exc.sqlstate == "55P03":
        text = (
            f"no lock within {lock_timeout_s:g} s (a long transaction on the table?); "
            "run it again when the database is quieter"
        )
    aftermath = (
        "nothing of it was applied"
        if transactional
        else "statements before it stay applied and are skipped (IF NOT EXISTS) next time; "
        "an interrupted index build is rebuilt"
    )
    message = f"migration failed while {step} ({code}): {text}"
    if step.endswith(".sql"):
        message = f"migration {step} failed ({code}): {text}; {aftermath}"
    return MigrationError(redact(message, secrets), retry=is_transient(exc))


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"
