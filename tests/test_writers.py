"""Tests of the sink writers: SQLite, Supabase (against a local fake PostgREST), the
migration's agreement with the row model, the writer factory and the retry helper."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from supabase import ClientOptions, create_client

from producer.redaction import mask_url, redact
from scorer_worker.errors import ConfigError, PermanentSinkError, TransientSinkError
from scorer_worker.settings import Settings
from sink.rows import JOB_COLUMN_NAMES, JOB_COLUMNS, METRIC_COLUMNS
from sink.writers import WriteOutcome, retrying_write, writer_from_settings
from sink.writers.postgres import PostgresWriter
from sink.writers.sqlite import SqliteWriter
from sink.writers.supabase import SupabaseWriter, is_transient_code

JOB = "job-1"
TOKEN = "tok-S3CRET-value"
OTHER_TOKEN = "tok-OTHER-value"
KEY = "service-role-KEY-123"
MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "sink" / "migrations"


def make_row(version: int, **changes: Any) -> dict[str, Any]:
    """A complete job row as rows.job_row would build it."""
    row = {
        "status": "running",
        "current_step": 30,
        "current_epoch": 1.5,
        "total_steps": 100,
        "total_epochs": 5.0,
        "progress": 30.0,
        "loss": 0.42,
        "eval_loss": 0.5,
        "learning_rate": 5e-5,
        "grad_norm": 1.25,
        "perplexity": 1.6487212707001282,
        "train_perplexity": 1.5219615556186337,
        "best_eval_loss": 0.5,
        "best_epoch": 1.5,
        "best_step": 30,
        "best_checkpoint_score": 0.188244,
        "best_checkpoint_step": 30,
        "best_checkpoint_epoch": 2,
        "best_checkpoint_path": "out/checkpoint-30",
        "epochs_without_improvement": 0,
        "loss_trend": "improving",
        "error_message": None,
        "started_at": "2024-05-01T10:00:00+00:00",
        "completed_at": None,
        "updated_at": "2024-05-01T10:05:00+00:00",
        "scoring_version": version,
        "best_score_breakdown": {"eval_loss": 0.25, "gap": 0.028, "improved": -0.1, "x": "inf"},
        "events_lost": 0,
    }
    assert set(row) == set(JOB_COLUMN_NAMES)
    return {**row, **changes}


def make_metric(step: int, train_loss: float, job_id: str = JOB) -> dict[str, Any]:
    """A complete metric row."""
    return {
        "job_id": job_id,
        "step": step,
        "epoch": step / 20,
        "train_loss": train_loss,
        "eval_loss": None,
        "learning_rate": 5e-5,
        "grad_norm": 1.0,
        "perplexity": None,
        "train_perplexity": 2.0,
        "timestamp": "2024-05-01T10:01:00+00:00",
    }


# --- SqliteWriter ---------------------------------------------------------------------


@pytest.fixture
def sqlite_writer(tmp_path: Path) -> SqliteWriter:
    writer = SqliteWriter(tmp_path / "sink.db")
    writer.ensure_schema()
    assert writer.create_job(JOB, TOKEN) is True
    return writer


def test_sqlite_write_reads_back_what_was_written(sqlite_writer: SqliteWriter) -> None:
    row, metrics = make_row(3), [make_metric(10, 0.9), make_metric(20, 0.7)]

    assert sqlite_writer.write(JOB, TOKEN, row, metrics) is WriteOutcome.WRITTEN

    stored = sqlite_writer.read_job(JOB)
    assert stored is not None
    assert "job_token" not in stored
    assert {k: stored[k] for k in JOB_COLUMN_NAMES} == row
    assert stored["best_score_breakdown"] == row["best_score_breakdown"]
    assert stored["id"] == JOB and stored["model_name"] == "demo" and stored["created_at"]
    assert sqlite_writer.read_metrics(JOB) == metrics


def test_sqlite_same_or_lower_version_is_stale_and_changes_nothing(
    sqlite_writer: SqliteWriter,
) -> None:
    sqlite_writer.write(JOB, TOKEN, make_row(3), [make_metric(10, 0.9)])
    before = (sqlite_writer.read_job(JOB), sqlite_writer.read_metrics(JOB))

    for version in (3, 2):
        changed = make_row(version, status="completed", loss=0.1)
        outcome = sqlite_writer.write(JOB, TOKEN, changed, [make_metric(10, 0.1)])
        assert outcome is WriteOutcome.STALE

    assert (sqlite_writer.read_job(JOB), sqlite_writer.read_metrics(JOB)) == before


def test_sqlite_higher_version_is_written(sqlite_writer: SqliteWriter) -> None:
    sqlite_writer.write(JOB, TOKEN, make_row(3), [make_metric(10, 0.9)])

    newer = make_row(4, status="completed", best_score_breakdown=None)
    assert sqlite_writer.write(JOB, TOKEN, newer, [make_metric(20, 0.5)]) is WriteOutcome.WRITTEN

    stored = sqlite_writer.read_job(JOB)
    assert stored is not None
    assert stored["status"] == "completed" and stored["scoring_version"] == 4
    assert stored["best_score_breakdown"] is None
    assert [m["step"] for m in sqlite_writer.read_metrics(JOB)] == [10, 20]


def test_sqlite_wrong_token_is_permanent_and_never_shown(sqlite_writer: SqliteWriter) -> None:
    with pytest.raises(PermanentSinkError) as caught:
        sqlite_writer.write(JOB, OTHER_TOKEN, make_row(3), [make_metric(10, 0.9)])

    message = str(caught.value)
    assert "token does not match" in message and JOB in message
    assert OTHER_TOKEN not in message and TOKEN not in message
    assert sqlite_writer.read_metrics(JOB) == []
    stored = sqlite_writer.read_job(JOB)
    assert stored is not None and stored["status"] == "pending"


def test_sqlite_missing_row_is_permanent(sqlite_writer: SqliteWriter) -> None:
    with pytest.raises(PermanentSinkError, match="no row with id job-404") as caught:
        sqlite_writer.write("job-404", TOKEN, make_row(1), [])

    assert TOKEN not in str(caught.value)
    assert sqlite_writer.read_job("job-404") is None


def test_sqlite_step_written_twice_keeps_one_row_with_later_values(
    sqlite_writer: SqliteWriter,
) -> None:
    sqlite_writer.write(JOB, TOKEN, make_row(1), [make_metric(10, 0.9), make_metric(20, 0.8)])
    # The same step twice in one batch: the later row wins there too.
    batch = [make_metric(20, 0.6), make_metric(30, 0.55), make_metric(30, 0.5)]
    sqlite_writer.write(JOB, TOKEN, make_row(2), batch)

    stored = sqlite_writer.read_metrics(JOB)
    assert [(m["step"], m["train_loss"]) for m in stored] == [(10, 0.9), (20, 0.6), (30, 0.5)]


def test_sqlite_create_job_is_idempotent_per_token(sqlite_writer: SqliteWriter) -> None:
    assert sqlite_writer.create_job(JOB, TOKEN) is False
    with pytest.raises(PermanentSinkError) as caught:
        sqlite_writer.create_job(JOB, OTHER_TOKEN)
    assert OTHER_TOKEN not in str(caught.value) and TOKEN not in str(caught.value)


def test_sqlite_ensure_schema_adds_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE local_training_jobs (id TEXT PRIMARY KEY, job_token TEXT, "
            "model_name TEXT, created_at TEXT, status TEXT, current_step INTEGER)"
        )
        conn.execute("INSERT INTO local_training_jobs (id, job_token) VALUES (?, ?)", (JOB, TOKEN))
    conn.close()

    writer = SqliteWriter(path)
    writer.ensure_schema()
    writer.ensure_schema()  # and again: a no-op

    with sqlite3.connect(path) as conn:
        present = {info[1] for info in conn.execute("PRAGMA table_info(local_training_jobs)")}
    conn.close()
    assert set(JOB_COLUMN_NAMES) <= present
    assert writer.write(JOB, TOKEN, make_row(1), [make_metric(1, 2.0)]) is WriteOutcome.WRITTEN


def test_sqlite_locked_database_is_transient(tmp_path: Path) -> None:
    writer = SqliteWriter(tmp_path / "busy.db", timeout_s=0.05)
    writer.ensure_schema()
    writer.create_job(JOB, TOKEN)
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(TransientSinkError, match="locked"):
            writer.write(JOB, TOKEN, make_row(1), [])
    finally:
        holder.rollback()
        holder.close()
    assert writer.write(JOB, TOKEN, make_row(1), []) is WriteOutcome.WRITTEN


def test_sqlite_rejects_rows_that_break_the_row_model(sqlite_writer: SqliteWriter) -> None:
    row = make_row(1)
    del row["loss"]
    with pytest.raises(ValueError, match="loss"):
        sqlite_writer.write(JOB, TOKEN, row, [])
    with pytest.raises(ValueError, match="another job"):
        sqlite_writer.write(JOB, TOKEN, make_row(1), [make_metric(1, 1.0, job_id="job-2")])


# --- The migration and the row model ---------------------------------------------------


def migration_sql() -> str:
    """Every migration file, in order, without comments (which may mention forbidden words).

    The schema's one source is the migrations: a column added by a later file counts, and a
    column the row model writes but no file adds fails.
    """
    files = sorted(MIGRATIONS_DIR.glob("*.sql"))
    return "\n".join(re.sub(r"--[^\n]*", "", path.read_text()) for path in files)


@pytest.mark.parametrize(
    ("table", "column"),
    [("local_training_jobs", c) for c in JOB_COLUMNS]
    + [("local_training_metrics", c) for c in METRIC_COLUMNS],
    ids=lambda value: getattr(value, "name", value),
)
def test_migration_adds_every_row_model_column_with_its_type(table: str, column: Any) -> None:
    default = getattr(column, "default", None)  # the column is then NOT NULL DEFAULT it
    constraint = rf"\s+NOT\s+NULL\s+DEFAULT\s+{re.escape(default)}" if default is not None else ""
    statement = (
        rf"ALTER\s+TABLE\s+{table}\s+ADD\s+COLUMN\s+IF\s+NOT\s+EXISTS\s+"
        rf"\"?{re.escape(column.name)}\"?\s+{re.escape(column.sql_type)}{constraint}\s*;"
    )
    assert re.search(statement, migration_sql(), re.IGNORECASE), statement


def test_migration_only_adds() -> None:
    sql = migration_sql()
    for forbidden in (
        r"\bDROP\b",
        r"\bRENAME\b",
        r"\bALTER\s+COLUMN\b",
        r"\bTYPE\b",
        r"\bDELETE\b",
    ):
        assert not re.search(forbidden, sql, re.IGNORECASE), forbidden
    creates = re.findall(
        r"\bCREATE\s+(?:UNIQUE\s+)?(?:TABLE|INDEX(?:\s+CONCURRENTLY)?)\b"
        r"(?!\s+(?:IF\s+NOT\s+EXISTS|CONCURRENTLY))",
        sql,
    )
    assert creates == []
    assert "UNIQUE" not in sql.upper()


@pytest.mark.parametrize("path", sorted(MIGRATIONS_DIR.glob("*.sql")), ids=lambda path: path.name)
def test_every_migration_file_only_adds_and_concurrent_builds_run_alone(path: Path) -> None:
    text = path.read_text()
    sql = re.sub(r"--[^\n]*", "", text)
    for forbidden in (r"\bDROP\b", r"\bRENAME\b", r"\bALTER\s+COLUMN\b", r"\bDELETE\b", "UNIQUE"):
        assert not re.search(forbidden, sql, re.IGNORECASE), forbidden
    creates = re.findall(
        r"\bCREATE\s+(?:TABLE|INDEX(?:\s+CONCURRENTLY)?)\b(?!\s+(?:IF\s+NOT\s+EXISTS|CONCURRENTLY))",
        sql,
        re.I,
    )
    assert creates == []
    if re.search(r"\bCONCURRENTLY\b", sql, re.IGNORECASE):
        # Outside any transaction (`ckpt-pipeline migrate`), and alone in its file so that
        # `supabase db push` can run it on its own as well.
        assert text.startswith("-- ckpt:no-transaction\n")
        assert len([s for s in sql.split(";") if s.strip()]) == 1


# --- SupabaseWriter against a local fake PostgREST --------------------------------------


class FakePostgrest(ThreadingHTTPServer):
    """A PostgREST stand-in on 127.0.0.1 with one job table and a request log."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.failure: tuple[int, Any] | None = None
        self.delay_s = 0.0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def of(self, method: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method]


class FakeHandler(BaseHTTPRequestHandler):
    """Answers the requests the writer makes, the way PostgREST does."""

    server: FakePostgrest

    def do_GET(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def log_message(self, *args: Any) -> None:
        pass  # keep pytest output clean

    def _handle(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        request = {
            "method": self.command,
            "path": split.path,
            "query": parse_qsl(split.query),
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
        }
        with self.server.lock:
            self.server.requests.append(request)
            time.sleep(self.server.delay_s)
            status, answer = self.server.failure or self._answer(request)
        payload = b"" if answer is None else json.dumps(answer).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (the timeout test)

    def _answer(self, request: dict[str, Any]) -> tuple[int, Any]:
        query = dict(request["query"])
        job_id = query.get("id", "eq.")[3:]
        token = query.get("job_token", "eq.")[3:]
        stored = self.server.jobs.get(job_id)
        if request["path"].endswith("/local_training_metrics"):
            return (204, None) if request["method"] == "DELETE" else (201, None)
        if request["method"] == "PATCH":
            guard = r"\(scoring_version\.is\.null,scoring_version\.lt\.(\d+)\)"
            below = int(re.fullmatch(guard, query["or"])[1])
            owned = stored is not None and stored["job_token"] == token
            if owned and (stored["scoring_version"] is None or stored["scoring_version"] < below):
                stored.update(request["body"])
                return 200, [{"id": job_id}]
            return 200, []
        matches = stored and ("job_token" not in query or stored["job_token"] == token)
        record = {"id": job_id, **(stored or {})}
        return 200, [{c: record.get(c) for c in query["select"].split(",")}] if matches else []


@pytest.fixture
def postgrest(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakePostgrest]:
    for name in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    server = FakePostgrest()
    server.jobs[JOB] = {"job_token": TOKEN, "scoring_version": None, "status": "pending"}
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def supabase_writer(postgrest: FakePostgrest) -> Iterator[SupabaseWriter]:
    writer = SupabaseWriter(postgrest.url, KEY, timeout_s=2.0)
    yield writer
    writer.close()


def test_supabase_write_sends_one_guarded_patch(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    row = make_row(7)
    metrics = [make_metric(10, 0.9), make_metric(20, 0.7)]

    assert supabase_writer.write(JOB, TOKEN, row, metrics) is WriteOutcome.WRITTEN

    [patch] = postgrest.of("PATCH")
    assert patch["path"] == "/rest/v1/local_training_jobs"
    query = dict(patch["query"])
    assert query["id"] == f"eq.{JOB}"
    assert query["job_token"] == f"eq.{TOKEN}"
    assert query["or"] == "(scoring_version.is.null,scoring_version.lt.7)"
    assert patch["headers"]["apikey"] == KEY
    assert patch["headers"]["authorization"] == f"Bearer {KEY}"
    assert "return=representation" in patch["headers"]["prefer"]
    assert patch["body"] == row
    assert [r["method"] for r in postgrest.requests] == ["PATCH", "DELETE", "POST"]


def test_supabase_metrics_are_deleted_then_inserted_per_step(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    metrics = [make_metric(20, 0.7), make_metric(10, 0.9), make_metric(20, 0.6)]

    supabase_writer.write(JOB, TOKEN, make_row(1), metrics)

    [delete], [insert] = postgrest.of("DELETE"), postgrest.of("POST")
    assert delete["path"] == insert["path"] == "/rest/v1/local_training_metrics"
    assert dict(delete["query"]) == {"job_id": f"eq.{JOB}", "step": "in.(10,20)"}
    assert insert["body"] == [make_metric(10, 0.9), make_metric(20, 0.6)]


def test_supabase_newer_stored_version_is_stale_without_metrics(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    postgrest.jobs[JOB]["scoring_version"] = 9

    outcome = supabase_writer.write(JOB, TOKEN, make_row(5), [make_metric(10, 0.9)])

    assert outcome is WriteOutcome.STALE
    assert [r["method"] for r in postgrest.requests] == ["PATCH", "GET"]
    lookup = dict(postgrest.of("GET")[0]["query"])
    assert lookup["id"] == f"eq.{JOB}" and lookup["job_token"] == f"eq.{TOKEN}"


def test_supabase_equal_version_rewrites_metrics_of_an_interrupted_write(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    # The row reached version 5 but the metric requests of that write never arrived.
    postgrest.jobs[JOB]["scoring_version"] = 5

    outcome = supabase_writer.write(JOB, TOKEN, make_row(5), [make_metric(10, 0.9)])

    assert outcome is WriteOutcome.STALE
    assert [r["method"] for r in postgrest.requests] == ["PATCH", "GET", "DELETE", "POST"]


def test_supabase_missing_row_and_wrong_token_are_told_apart(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    with pytest.raises(PermanentSinkError, match="no row with id job-404") as missing:
        supabase_writer.write("job-404", TOKEN, make_row(1), [make_metric(1, 1.0, "job-404")])
    with pytest.raises(PermanentSinkError, match=f"token does not match for row {JOB}") as wrong:
        supabase_writer.write(JOB, OTHER_TOKEN, make_row(1), [make_metric(1, 1.0)])

    for caught in (missing, wrong):
        assert TOKEN not in str(caught.value) and OTHER_TOKEN not in str(caught.value)
    assert postgrest.of("DELETE") == postgrest.of("POST") == []


def test_supabase_503_is_transient(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    postgrest.failure = (503, {"message": "upstream unavailable"})

    with pytest.raises(TransientSinkError, match="503") as caught:
        supabase_writer.write(JOB, TOKEN, make_row(1), [])

    assert TOKEN not in str(caught.value) and KEY not in str(caught.value)
    # No hidden context: httpx's message holds the URL, and the URL holds the token.
    assert caught.value.__suppress_context__
    assert len(postgrest.requests) == 1  # retries are the caller's, not postgrest-py's


@pytest.mark.parametrize(
    "answer",
    [
        (400, {"code": "PGRST204", "message": "Could not find the 'loss' column"}),
        (400, {"code": "22P02", "message": f'invalid input syntax for type uuid: "{TOKEN}"'}),
        (401, {"message": "Invalid API key"}),
    ],
)
def test_supabase_client_errors_are_permanent(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter, answer: tuple[int, Any]
) -> None:
    postgrest.failure = answer

    with pytest.raises(PermanentSinkError) as caught:
        supabase_writer.write(JOB, TOKEN, make_row(1), [])

    assert TOKEN not in str(caught.value) and KEY not in str(caught.value)
    assert answer[1].get("code", "no code") in str(caught.value)


def test_supabase_non_json_success_is_not_a_match(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    postgrest.failure = (200, "<html>not PostgREST</html>")

    with pytest.raises(PermanentSinkError, match="not PostgREST JSON"):
        supabase_writer.write(JOB, TOKEN, make_row(1), [])


def test_supabase_timeout_and_refused_connection_are_transient(postgrest: FakePostgrest) -> None:
    postgrest.delay_s = 0.5
    slow = SupabaseWriter(postgrest.url, KEY, timeout_s=0.1)
    with pytest.raises(TransientSinkError, match="timed out"):
        slow.write(JOB, TOKEN, make_row(1), [])
    slow.close()

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    refused = SupabaseWriter(f"http://127.0.0.1:{closed_port}", KEY)
    with pytest.raises(TransientSinkError) as caught:
        refused.write(JOB, TOKEN, make_row(1), [])
    refused.close()
    assert TOKEN not in str(caught.value)


def test_supabase_read_job_never_returns_the_token(
    postgrest: FakePostgrest, supabase_writer: SupabaseWriter
) -> None:
    supabase_writer.write(JOB, TOKEN, make_row(3), [])

    stored = supabase_writer.read_job(JOB)

    assert stored is not None and stored["scoring_version"] == 3
    assert "job_token" not in stored
    assert "job_token" not in dict(postgrest.requests[-1]["query"])["select"]
    assert supabase_writer.read_job("job-404") is None


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ((503, {"message": "upstream unavailable"}), TransientSinkError),
        ((503, {"code": "PGRST001", "message": "Database client error"}), TransientSinkError),
        ((500, {"code": "40001", "message": "could not serialize access"}), TransientSinkError),
        ((400, {"code": "PGRST204", "message": "Could not find the column"}), PermanentSinkError),
    ],
)
def test_supabase_given_client_errors_are_classified_by_code(
    postgrest: FakePostgrest, answer: tuple[int, Any], error: type[Exception]
) -> None:
    postgrest.failure = answer
    # A plain client without our response hook (and with an httpx client of its own:
    # supabase-py's default path passes postgrest-py a deprecated timeout argument).
    http = httpx.Client()
    writer = SupabaseWriter(
        postgrest.url,
        KEY,
        client=create_client(postgrest.url, KEY, ClientOptions(httpx_client=http)),
    )

    with pytest.raises(error):
        writer.write(JOB, TOKEN, make_row(1), [])
    http.close()


@pytest.mark.parametrize(
    ("code", "transient"),
    [
        (None, True),
        ("503", True),
        ("429", True),
        ("404", False),
        ("PGRST000", True),
        ("PGRST116", False),
        ("57014", True),
        ("08006", True),
        ("23505", False),
        ("42703", False),
    ],
)
def test_is_transient_code(code: str | None, transient: bool) -> None:
    assert is_transient_code(code) is transient


# --- writer_from_settings, retrying_write, helpers -------------------------------------


def test_writer_from_settings_builds_a_ready_sqlite_writer(tmp_path: Path) -> None:
    writer = writer_from_settings(Settings(sink_url=f"sqlite:///{tmp_path}/sink.db"))

    assert isinstance(writer, SqliteWriter)
    assert writer.create_job(JOB, TOKEN) is True  # the schema is there
    writer.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://admin:hunter2-PASSWORD@db.example.com/jobs",
        "https://db.example.com/?user=admin&password=hunter2-PASSWORD",
        "",
    ],
)
def test_writer_from_settings_rejects_bad_urls_without_echoing_passwords(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        writer_from_settings(Settings(sink_url=url))

    assert "CKPT_SINK" in str(caught.value)
    assert "hunter2-PASSWORD" not in str(caught.value)


def test_writer_from_settings_wants_an_absolute_sqlite_path() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        writer_from_settings(Settings(sink_url="sqlite://relative.db"))


def test_writer_from_settings_postgres_and_supabase(tmp_path: Path) -> None:
    # The PostgreSQL writer connects on first use, so building it needs no server.
    for url in ("postgresql://u:pw-SECRET@localhost/db", "postgres://u:pw-SECRET@localhost/db"):
        postgres = writer_from_settings(Settings(sink_url=url))
        assert isinstance(postgres, PostgresWriter)
        postgres.close()
    with pytest.raises(ConfigError, match="not a valid PostgreSQL URL") as caught:
        writer_from_settings(Settings(sink_url="postgresql://u:pw-SECRET@localhost/db?bad=1"))
    assert "pw-SECRET" not in str(caught.value)
    with pytest.raises(ConfigError, match="SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY"):
        writer_from_settings(Settings(sink_url="supabase"))

    settings = Settings(sink_url="supabase", supabase_url="http://127.0.0.1:9", supabase_key=KEY)
    writer = writer_from_settings(settings)
    assert isinstance(writer, SupabaseWriter)
    writer.close()


class FlakyWriter:
    """Fails with the given errors, then writes."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def write(self, job_id: str, job_token: str, row: dict, metrics: list) -> WriteOutcome:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return WriteOutcome.WRITTEN


def test_retrying_write_retries_transient_errors_with_bounded_backoff() -> None:
    waits: list[float] = []
    writer = FlakyWriter(TransientSinkError("a"), TransientSinkError("b"))

    outcome = retrying_write(writer, JOB, TOKEN, {}, [], 5, 0.2, sleep=waits.append)

    assert outcome is WriteOutcome.WRITTEN and writer.calls == 3
    assert len(waits) == 2 and all(0 <= wait <= 0.2 for wait in waits)


def test_retrying_write_gives_up_with_the_last_transient_error() -> None:
    writer = FlakyWriter(*(TransientSinkError(f"try {i}") for i in range(5)))

    with pytest.raises(TransientSinkError, match="try 2"):
        retrying_write(writer, JOB, TOKEN, {}, [], 3, 1.0, sleep=lambda _: None)
    assert writer.calls == 3


def test_retrying_write_never_retries_permanent_errors() -> None:
    writer = FlakyWriter(PermanentSinkError("no row"), TransientSinkError("unused"))

    with pytest.raises(PermanentSinkError):
        retrying_write(writer, JOB, TOKEN, {}, [], 5, 1.0, sleep=lambda _: None)
    assert writer.calls == 1


def test_mask_url_and_redact() -> None:
    assert mask_url("postgresql://user:pw@host/db") == "postgresql://***@host/db"
    assert mask_url("x://h/?a=1&password=pw&b=2") == "x://h/?a=1&password=***&b=2"
    assert redact(f"bad {TOKEN} and {KEY}", (TOKEN, KEY, "")) == "bad *** and ***"
