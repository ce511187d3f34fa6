"""The Supabase sink: the platform's own tables, through PostgREST (supabase-py).

PostgREST has no multi-statement transaction, so a write is three requests (update the job
row, delete then insert its metric rows) and can be cut between them. A retry then finds
the row already at its version: in that case the metric rows are written again (they come
from the same state, so rewriting them is idempotent), which is what lets an interrupted
write converge instead of losing the history of those steps.
"""

from __future__ import annotations

from typing import Any

import httpx
from postgrest import APIError
from postgrest.types import ReturnMethod
from supabase import Client, ClientOptions, SupabaseException, create_client

from producer.redaction import redact
from scorer_worker.errors import ConfigError, PermanentSinkError, TransientSinkError

from .base import (
    JOBS_TABLE,
    METRICS_TABLE,
    READ_COLUMNS,
    WriteOutcome,
    check_write_args,
    one_row_per_step,
    outcome_without_match,
)

# Steps per DELETE (they travel in the URL, which proxies cap at a few KiB) and rows per
# INSERT (body size); the first flush of a long run carries every logged step.
METRICS_CHUNK = 500
# PostgREST answers a lost database connection, a timeout or a lock with 5xx; a gateway
# answers 408/429 when it is overloaded. Everything else is a client error that a retry
# would only repeat (unknown column, bad type, bad key).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58", "XX")
_TRANSIENT_CODES = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003", "55P03"})


class SupabaseWriter:
    """Writes job rows and metric rows through the Supabase REST API.

    Args:
        url: the project URL (``SUPABASE_URL``).
        key: the service-role key (``SUPABASE_SERVICE_ROLE_KEY``); never shown in errors.
        client: a ready ``supabase.Client`` to use instead of creating one (its owner
            closes it). Its HTTP status codes are not seen, so errors are classified by
            their PostgREST / SQLSTATE code only.
        timeout_s: per-request timeout of the client this writer creates.

    Raises:
        ConfigError: the URL or key is rejected by supabase-py.
    """

    def __init__(
        self, url: str, key: str, *, client: Client | None = None, timeout_s: float = 10.0
    ) -> None:
        self._secrets: tuple[str, ...] = (key,)
        self._http: httpx.Client | None = None
        # Only a client of our own has the hook that raises on transient HTTP statuses.
        self._sees_status = client is None
        if client is None:
            self._http = _http_client(timeout_s)
            client = _create_client(url, key, self._http)
        self._client = client

    def write(
        self, job_id: str, job_token: str, row: dict[str, Any], metrics: list[dict[str, Any]]
    ) -> WriteOutcome:
        """Write the row (guarded PATCH) and its metric rows; see ``base.Writer.write``."""
        check_write_args(job_id, row, metrics)
        secrets = (*self._secrets, job_token)
        version = row["scoring_version"]
        update = (
            self._client.table(JOBS_TABLE)
            .update(row, returning=ReturnMethod.representation)
            .eq("id", job_id)
            .eq("job_token", job_token)
            .or_(f"scoring_version.is.null,scoring_version.lt.{version}")
            .select("id")  # the matched ids are enough; the token need not come back
        )
        if self._run("update of the job row", update, secrets):
            self._replace_metrics(job_id, metrics, secrets)
            return WriteOutcome.WRITTEN
        stored = self._stored_versions(job_id, job_token, secrets)
        if stored and version in stored:
            # Our own earlier attempt updated the row and was cut before its metrics.
            self._replace_metrics(job_id, metrics, secrets)
        return outcome_without_match(
            job_id, token_matches=bool(stored), row_exists=bool(stored) or self._exists(job_id)
        )

    def read_job(self, job_id: str) -> dict[str, Any] | None:
        """Return the row's ``READ_COLUMNS`` (never the token), or None if absent."""
        query = (
            self._client.table(JOBS_TABLE).select(",".join(READ_COLUMNS)).eq("id", job_id).limit(1)
        )
        found = self._run("read of the job row", query, self._secrets)
        return found[0] if found else None

    def close(self) -> None:
        """Close the HTTP connections this writer opened (not those of a given client)."""
        if self._http is not None:
            self._http.close()
            self._http = None

    def _stored_versions(
        self, job_id: str, job_token: str, secrets: tuple[str, ...]
    ) -> list[int | None]:
        query = (
            self._client.table(JOBS_TABLE)
            .select("id,scoring_version")
            .eq("id", job_id)
            .eq("job_token", job_token)
        )
        return [found["scoring_version"] for found in self._run("row lookup", query, secrets)]

    def _exists(self, job_id: str) -> bool:
        query = self._client.table(JOBS_TABLE).select("id").eq("id", job_id).limit(1)
        return bool(self._run("row lookup", query, self._secrets))

    def _replace_metrics(
        self, job_id: str, metrics: list[dict[str, Any]], secrets: tuple[str, ...]
    ) -> None:
        # Delete then insert, not upsert: the legacy table may hold duplicate (job_id, step)
        # rows and may have no unique constraint for ON CONFLICT to use.
        rows = one_row_per_step(metrics)
        for start in range(0, len(rows), METRICS_CHUNK):
            chunk = rows[start : start + METRICS_CHUNK]
            steps = [metric["step"] for metric in chunk]
            delete = (
                self._client.table(METRICS_TABLE)
                .delete(returning=ReturnMethod.minimal)
                .eq("job_id", job_id)
                .in_("step", steps)
            )
            self._run("delete of metric rows", delete, secrets)
            insert = self._client.table(METRICS_TABLE).insert(chunk, returning=ReturnMethod.minimal)
            self._run("insert of metric rows", insert, secrets)

    def _run(self, what: str, query: Any, secrets: tuple[str, ...]) -> list[dict[str, Any]]:
        # `from None` everywhere: httpx messages carry the URL, whose query string holds the
        # job token, and a chained traceback would print it into the worker's log.
        try:
            # Our retry policy (tenacity, bounded by the flush lock) is the only one.
            data = query.retry(False).execute().data
        except httpx.HTTPStatusError as exc:
            status = exc.response.status_code
            raise TransientSinkError(f"Supabase {what} failed: HTTP {status}") from None
        except httpx.TimeoutException:
            raise TransientSinkError(f"Supabase {what} timed out") from None
        except httpx.TransportError as exc:
            reason = redact(f"{type(exc).__name__}: {exc}", secrets)
            raise TransientSinkError(f"Supabase {what} failed: {reason}") from None
        except APIError as exc:
            raise self._api_error(what, exc, secrets) from None
        if not isinstance(data, list):
            # postgrest-py hands back the text of a non-JSON success (a web page, say)
            # instead of failing; taking it for rows would count it as a match.
            raise PermanentSinkError(
                f"Supabase {what}: the answer is not PostgREST JSON (is SUPABASE_URL right?)"
            )
        return data

    def _api_error(self, what: str, exc: APIError, secrets: tuple[str, ...]) -> Exception:
        code = exc.code or "no code"
        message = redact(f"Supabase {what} failed ({code}): {exc.message}", secrets)
        # With our own HTTP client, transient statuses were already raised by the hook, so
        # whatever is left is a client error; otherwise only the error code tells.
        if not self._sees_status and is_transient_code(exc.code):
            return TransientSinkError(message)
        return PermanentSinkError(message)


def is_transient_code(code: str | None) -> bool:
    """Tell whether a PostgREST error code (an HTTP status, PGRST code or SQLSTATE) is transient.

    A missing code means a gateway or proxy error page rather than PostgREST's own answer.
    """
    if not code:
        return True
    if len(code) == 3 and code.isdigit():  # an HTTP status (SQLSTATEs have five characters)
        return _is_transient_status(int(code))
    return code in _TRANSIENT_CODES or (
        not code.startswith("PGRST") and code[:2] in _TRANSIENT_SQLSTATE_CLASSES
    )


def _is_transient_status(status: int) -> bool:
    return status >= 500 or status in (408, 429)


def _raise_for_transient_status(response: httpx.Response) -> None:
    # postgrest-py's APIError does not keep the HTTP status, so it is checked here, where
    # the status is still known; 4xx answers go on to become APIError with their details.
    if _is_transient_status(response.status_code):
        response.raise_for_status()


def _http_client(timeout_s: float) -> httpx.Client:
    # An httpx client of our own: postgrest-py truncates a numeric timeout to whole seconds
    # and deprecates passing it, and the response hook needs a client we control.
    return httpx.Client(
        timeout=httpx.Timeout(timeout_s),
        event_hooks={"response": [_raise_for_transient_status]},
    )


def _create_client(url: str, key: str, http: httpx.Client) -> Client:
    options = ClientOptions(httpx_client=http, postgrest_client_retry=False)
    try:
        return create_client(url, key, options)
    except SupabaseException as exc:
        http.close()
        message = redact(exc.message, (key,))
        raise ConfigError(f"SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY rejected: {message}") from None
