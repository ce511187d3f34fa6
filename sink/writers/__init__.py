"""Sink writers: choosing one from the settings, and writing with retries.

``CKPT_SINK`` selects the writer: ``sqlite:///abs/path.db`` (embedded default), ``supabase``
(with ``SUPABASE_URL`` and ``SUPABASE_SERVICE_ROLE_KEY``), or ``postgresql://...``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from scorer_worker.errors import ConfigError, PermanentSinkError, TransientSinkError
from scorer_worker.settings import Settings

from .base import WriteOutcome, Writer, mask_url
from .sqlite import SqliteWriter

__all__ = ["WriteOutcome", "Writer", "retrying_write", "writer_from_settings"]

SQLITE_PREFIX = "sqlite://"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")
ACCEPTED_FORMS = "sqlite:///abs/path.db, supabase, postgresql://user:pass@host/db"
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

        return PostgresWriter(url)
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


def _sqlite_writer(url: str) -> Writer:
    path = url[len(SQLITE_PREFIX) :]
    if not path.startswith("/"):
        raise ConfigError(
            f"CKPT_SINK={mask_url(url)!r}: use sqlite:///abs/path.db (an absolute path)"
        )
    writer = SqliteWriter(path)
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
