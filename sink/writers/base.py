"""What every sink writer promises, and the pieces of it that do not depend on the database.

A write is one guarded UPDATE of the job row (matching id, token and an older or missing
``scoring_version``) followed, only if it matched, by replacing the metric rows of the
written steps. A row never moves backwards: an equal or newer version already stored makes
the write ``STALE``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from scorer_worker.errors import PermanentSinkError
from sink.rows import JOB_COLUMN_NAMES, JOB_COLUMNS, METRIC_COLUMN_NAMES

JOBS_TABLE = "local_training_jobs"
METRICS_TABLE = "local_training_metrics"

# What ``read_job`` returns: the identity columns the platform owns plus every column the
# sink writes. Never ``job_token`` (a secret) nor the platform's free-form ``config``.
READ_COLUMNS: tuple[str, ...] = ("id", "model_name", "created_at", *JOB_COLUMN_NAMES)
JSON_COLUMNS: frozenset[str] = frozenset(c.name for c in JOB_COLUMNS if c.sql_type == "jsonb")

# Parameter names of the guard; prefixed so they cannot collide with a column name.
MATCH_ID = "match_id"
MATCH_TOKEN = "match_token"


class WriteOutcome(enum.StrEnum):
    """Result of a write that did not fail.

    Attributes:
        WRITTEN: the row was updated and the metric rows replaced.
        STALE: the row already holds this version or a newer one; nothing was changed.
    """

    WRITTEN = "written"
    STALE = "stale"


class Writer(Protocol):
    """A sink writer: updates ``local_training_jobs`` and ``local_training_metrics``."""

    def write(
        self, job_id: str, job_token: str, row: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> WriteOutcome:
        """Write the job row (guarded) and, if it was written, its metric rows.

        Args:
            job_id: the row's ``id``.
            job_token: the row's ``job_token``; never echoed in errors.
            row: one value per ``rows.JOB_COLUMN_NAMES``.
            metrics: rows with the keys ``rows.METRIC_COLUMN_NAMES``, one per step.

        Returns:
            WRITTEN, or STALE when an equal or newer ``scoring_version`` is stored.

        Raises:
            PermanentSinkError: no row with this id, or the token does not match.
            TransientSinkError: the database is unreachable, slow, locked or failing (5xx).
        """
        ...

    def read_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the row's ``READ_COLUMNS`` (never the token), or None if there is none."""
        ...

    def close(self) -> None:
        """Release connections; the writer is not used afterwards."""
        ...


def guarded_update_sql(placeholder: Callable[[str], str], quote: Callable[[str], str]) -> str:
    """Return the one guarded UPDATE of the job row, built from ``rows.JOB_COLUMNS``.

    Args:
        placeholder: spells a named parameter for the driver, e.g. ``lambda n: f":{n}"``
            (sqlite3) or ``lambda n: f"%({n})s"`` (psycopg).
        quote: quotes an identifier.

    Returns:
        SQL whose parameters are every column name plus ``MATCH_ID`` and ``MATCH_TOKEN``
        (see ``guarded_update_params``).
    """
    assignments = ", ".join(f"{quote(c.name)} = {placeholder(c.name)}" for c in JOB_COLUMNS)
    version = quote("scoring_version")
    return (
        f"UPDATE {quote(JOBS_TABLE)} SET {assignments} "
        f"WHERE {quote('id')} = {placeholder(MATCH_ID)} "
        f"AND {quote('job_token')} = {placeholder(MATCH_TOKEN)} "
        f"AND ({version} IS NULL OR {version} < {placeholder('scoring_version')})"
    )


def guarded_update_params(job_id: str, job_token: str, row: dict[str, Any]) -> dict[str, Any]:
    """Return the parameters of ``guarded_update_sql`` for one row."""
    return {**row, MATCH_ID: job_id, MATCH_TOKEN: job_token}


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (``timestamp`` is a column name, and a keyword)."""
    return '"' + name.replace('"', '""') + '"'


_JOB_KEYS, _METRIC_KEYS = frozenset(JOB_COLUMN_NAMES), frozenset(METRIC_COLUMN_NAMES)


def check_write_args(job_id: str, row: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Reject a row or metric rows that break the row model; a bug, so not a SinkError.

    Raises:
        ValueError: keys differ from the column lists, the version is not an int, or a
            metric row belongs to another job.
    """
    if row.keys() != _JOB_KEYS:
        raise ValueError(
            f"job row keys differ from JOB_COLUMNS: {_key_diff(row, JOB_COLUMN_NAMES)}"
        )
    version = row["scoring_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError("job row scoring_version must be an int")
    for metric in metrics:
        if metric.keys() != _METRIC_KEYS:
            diff = _key_diff(metric, METRIC_COLUMN_NAMES)
            raise ValueError(f"metric row keys differ from METRIC_COLUMNS: {diff}")
        if metric["job_id"] != job_id:
            raise ValueError("metric row belongs to another job")


def one_row_per_step(metrics: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the last row given for each step, ordered by step.

    A duplicate step in one batch would otherwise insert two rows for one (job_id, step).
    """
    by_step = {metric["step"]: metric for metric in metrics}
    return [by_step[step] for step in sorted(by_step)]


def outcome_without_match(job_id: str, *, token_matches: bool, row_exists: bool) -> WriteOutcome:
    """Decide what a guarded update that matched nothing means.

    Args:
        job_id: the row's id (safe to show).
        token_matches: a row with this id and token exists.
        row_exists: a row with this id exists (whatever its token).

    Returns:
        STALE when the row exists with this token: its version is equal or newer.

    Raises:
        PermanentSinkError: the row is missing or its token differs. The message never
            contains the token.
    """
    if token_matches:
        return WriteOutcome.STALE
    if row_exists:
        raise PermanentSinkError(f"job token does not match for row {job_id}")
    raise PermanentSinkError(f"no row with id {job_id} in {JOBS_TABLE}")


def _key_diff(row: dict[str, Any], names: tuple[str, ...]) -> str:
    missing = sorted(set(names) - set(row))
    extra = sorted(set(row) - set(names))
    return f"missing {missing}, unexpected {extra}"
