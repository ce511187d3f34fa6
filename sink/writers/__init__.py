"""Sink writers: choosing one from the settings, and writing with retries.

``CKPT_SINK`` selects the writer: a SQLite file (embedded default), ``supabase`` (with
``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY``), or ``postgresql://...``.

SQLite URLs follow SQLAlchemy's convention: three slashes then the path, so
``sqlite:///relative.db`` is ``relative.db`` in the working folder (made absolute when the
writer is built) and ``sqlite:////abs/path.db`` is ``/abs/path.db``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from producer.redaction import mask_url
from scorer_worker.errors import ConfigError, PermanentSinkError, TransientSinkError
from scorer_worker.settings import Settings

from .base import WriteOutcome, Writer
from .sqlite import SqliteWriter

__all__ = ["WriteOutcome", "Writer", "retrying_write", "writer_from_settings"]

SQLITE_PREFIX = "sqlite://"
SQLITE_PATH_PREFIX = "sqlite:///"  # then the path: relative.db, or /abs/path.db
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
ACCEPTED_FORMS = (
    "sqlite:///relative.db, sqlite:////abs/path.db, supabase, postgresql://user:pass@host/db"
)
# First wait of the backoff; later waits grow exponentially up to max_wait_s, with full
# jitter so that many workers failing together do not retry together.
FIRST_WAIT_S = 0.5


def writer_from_settings(settings: Settings) -> Writer:
    """Build the writer ``settings.sink_url`` names (the SQLite schema is ensured).

    The PostgreSQL writer connects on first use; its schema comes from ``sink.migrate``.

    Raises:
        ConfigError: the URL is malformed, unsupported, or the Supabase settings or the
            SQLite file are unusable. Passwords in the URL are masked in the message.
    """
    url = settings.sink_url.strip()
    if url.startswith(SQLITE_PREFIX):
        return _sqlite_writer(url)
    if url == "supabase":
        return _supabase_writer(settings)
    if url.startswith(POSTGRES_PREFIXES):
        # Imported here, like supabase-py: `ckpt-pipeline pump` loads no database driver.
        from .postgres import PostgresWriter

        return PostgresWriter(
            url,
            connect_timeout_s=settings.sink_connect_timeout_s,
            lock_timeout_s=settings.sink_lock_timeout_s,
            statement_timeout_s=settings.sink_statement_timeout_s,
            idle_in_transaction_timeout_s=settings.sink_idle_in_transaction_timeout_s,
            keepalive=settings.keepalive(),
        )
    raise ConfigError(f"CKPT_SINK={mask_url(url)!r} is not one of: {ACCEPTED_FORMS}")


def retrying_write(
    writer: Writer,
    job_id: str,
    token: str,
    row: dict[str, Any],
    metrics: list[dict[str, Any]],
    attempts: int,
    max_wait_s: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> WriteOutcome:
    """Call ``writer.write``, retrying TransientSinkError with exponential backoff and jitter.

    Args:
        writer: the sink writer.
        job_id: the row's id.
        token: the row's job token.
        row: the job row.
        metrics: the metric rows.
        attempts: calls at most (at least one is made).
        max_wait_s: the longest wait between two calls.
        sleep: how to wait (tests pass a fake).

    Returns:
        The outcome of the first call that did not fail transiently.

    Raises:
        TransientSinkError: the last one, once ``attempts`` calls have failed.
        PermanentSinkError: at once; it is never retried.
    """
    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_random_exponential(multiplier=FIRST_WAIT_S, max=max_wait_s),
        retry=retry_if_exception_type(TransientSinkError),
        sleep=sleep,
        reraise=True,
    )
    return retrying(writer.write, job_id, token, row, metrics)


def sqlite_path(url: str) -> Path:
    """Return the file a ``sqlite:///...`` URL names, made absolute against the working folder.

    Raises:
        ConfigError: the URL has no path, or not three slashes (``sqlite://x.db`` would name a
            host in SQLAlchemy's convention, which SQLite has not).
    """
    if not url.startswith(SQLITE_PATH_PREFIX) or not url[len(SQLITE_PATH_PREFIX) :].strip():
        raise ConfigError(
            f"CKPT_SINK={mask_url(url)!r}: use sqlite:///relative/path.db (relative to the "
            "working folder) or sqlite:////absolute/path.db"
        )
    # Absolute now: a worker that changes its working folder later still writes this file.
    return Path(os.path.abspath(url[len(SQLITE_PATH_PREFIX) :]))


def _sqlite_writer(url: str) -> Writer:
    path = sqlite_path(url)
    writer = SqliteWriter(path)
    if not path.exists():
        # Created by the first write: a read-only command (status) must not create it. A
        # folder that is missing is still a configuration error, found now.
        if not path.parent.is_dir():
            # Most likely an absolute path written with three slashes (the old documented form)
            raise ConfigError(
                f"CKPT_SINK: the folder of the SQLite file {path} does not exist (sqlite:/// "
                "is followed by a path relative to the working folder; an absolute path takes "
                "four slashes: sqlite:////abs/path.db)"
            )
        return writer
    try:
        writer.ensure_schema()
    except PermanentSinkError as exc:
        raise ConfigError(f"CKPT_SINK: cannot use the SQLite file {path}: {exc}") from None
    return writer


def _supabase_writer(settings: Settings) -> Writer:
    missing = [
        name
        for name, value in (
            ("SUPABASE_URL", settings.supabase_url),
            ("SUPABASE_SERVICE_ROLE_KEY", settings.supabase_key),
        )
        if not value
    ]
    if missing:
        raise ConfigError(f"CKPT_SINK=supabase needs {' and '.join(missing)}")
    # Imported here: supabase-py pulls in auth, storage and realtime clients that the
    # SQLite and PostgreSQL sinks never need.
    from .supabase import SupabaseWriter

    return SupabaseWriter(settings.supabase_url, settings.supabase_key)
