"""The Supabase writer's retry behaviour, by the requests a local PostgREST stand-in records:
transient failures (timeouts, refused connections, 502/503/504) are retried with backoff
until they succeed, client errors (4xx) are sent exactly once, and an empty PATCH result is
told apart (stale: fine; missing row or wrong token: recorded as permanent by the flush)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import fakeredis
import pytest

from ckpt_pipeline.status import pipeline_state
from ckpt_pipeline.testing.local_redis import free_port
from scorer_worker.drain import drain_job
from scorer_worker.errors import PermanentSinkError
from scorer_worker.pump import Pump
from scorer_worker.registry import register_job
from scorer_worker.settings import Settings
from sink import flush
from sink.rows import METRIC_COLUMN_NAMES
from sink.tasks import FLUSH
from sink.writers import WriteOutcome, retrying_write
from sink.writers import supabase as supabase_module
from sink.writers.supabase import SupabaseWriter
from tests.test_drain_pump_flush import publish, raw_run
from tests.test_writers import (
    JOB,
    KEY,
    OTHER_TOKEN,
    TOKEN,
    FakeHandler,
    FakePostgrest,
    make_metric,
    make_row,
)

PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)
# PostgREST's own error bodies (code, message, details, hint), and what gateways in front of
# it send: an HTML page or nothing at all.
POSTGREST_503 = {"code": "PGRST001", "message": "Database client error", "details": None}
GATEWAY_PAGE = "<html><body><h1>502 Bad Gateway</h1></body></html>"


@dataclass
class Delay:
    """A scripted step: hold the request this long, then answer it normally."""

    seconds: float


class ScriptedServer(FakePostgrest):
    """test_writers' PostgREST stand-in, whose next answers can be scripted.

    Unscripted requests are answered as PostgREST would (``FakeHandler``); scripted ones get
    the given (status, body), or are held for a ``Delay`` first. Every request is recorded.

    Args:
        port: a fixed port (to come up where a writer already points); random by default.
    """

    def __init__(self, port: int = 0) -> None:
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", port), ScriptedHandler)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.failure: tuple[int, Any] | None = None
        self.delay_s = 0.0
        self.lock = threading.Lock()
        self.script: list[tuple[int, Any] | Delay] = []
        self._thread = threading.Thread(target=self.serve_forever, args=(0.01,), daemon=True)

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def methods(self) -> list[str]:
        return [r["method"] for r in self.requests]


class ScriptedHandler(FakeHandler):
    """FakeHandler's PostgREST answers, preceded by the server's script."""

    server: ScriptedServer

    def _handle(self) -> None:
        owner = self.server
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
        with owner.lock:
            owner.requests.append(request)
            step = owner.script.pop(0) if owner.script else None
        if isinstance(step, Delay):
            time.sleep(step.seconds)  # outside the lock: the client's retry is not held up
            step = None
        with owner.lock:
            status, answer = step or self._answer(request)
        self._send(status, answer)

    def _send(self, status: int, answer: Any) -> None:
        if isinstance(answer, str):
            payload, kind = answer.encode(), "text/html"
        else:
            payload = b"" if answer is None else json.dumps(answer).encode()
            kind = "application/json"
        try:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped waiting (the timeout test)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    stand_in = ScriptedServer().start()
    stand_in.jobs[JOB] = {"job_token": TOKEN, "scoring_version": None, "status": "pending"}
    yield stand_in
    stand_in.stop()


@pytest.fixture
def writer(server: ScriptedServer) -> Iterator[SupabaseWriter]:
    supabase_writer = SupabaseWriter(server.url, KEY, timeout_s=2.0)
    yield supabase_writer
    supabase_writer.close()


def write_with_retries(
    writer: SupabaseWriter, version: int, metrics: list[dict[str, Any]] | None = None
) -> tuple[WriteOutcome, list[float]]:
    """retrying_write as the flush calls it, with the waits recorded instead of slept."""
    waits: list[float] = []
    outcome = retrying_write(
        writer, JOB, TOKEN, make_row(version), metrics or [], 5, 4.0, sleep=waits.append
    )
    return outcome, waits


# --- retries -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [(502, GATEWAY_PAGE), (503, POSTGREST_503), (504, None), (500, {"code": "40001"})],
    ids=["502-gateway-page", "503-postgrest", "504-empty", "500-serialization"],
)
def test_5xx_is_retried_with_backoff_until_it_succeeds(
    server: ScriptedServer, writer: SupabaseWriter, failure: tuple[int, Any]
) -> None:
    server.script = [failure, failure]

    outcome, waits = write_with_retries(writer, 3, [make_metric(10, 0.9)])

    assert outcome is WriteOutcome.WRITTEN
    assert server.methods() == ["PATCH", "PATCH", "PATCH", "DELETE", "POST"]
    assert len(waits) == 2 and all(0 <= wait <= 4.0 for wait in waits)
    assert server.jobs[JOB]["scoring_version"] == 3
    first, *retries = server.of("PATCH")
    assert all(r["query"] == first["query"] and r["body"] == first["body"] for r in retries)


def test_a_5xx_on_the_metrics_insert_retries_the_whole_write(
    server: ScriptedServer, writer: SupabaseWriter
) -> None:
    # PATCH and DELETE succeed, the insert fails: the retry finds the row at its version
    # (STALE) and still writes the metrics, so the history converges.
    server.script = [(200, [{"id": JOB}]), (204, None), (503, POSTGREST_503)]
    server.jobs[JOB]["scoring_version"] = 3  # what the answered PATCH would have stored

    outcome, waits = write_with_retries(writer, 3, [make_metric(10, 0.9)])

    assert outcome is WriteOutcome.STALE and len(waits) == 1
    assert server.methods() == ["PATCH", "DELETE", "POST", "PATCH", "GET", "DELETE", "POST"]
    assert server.of("POST")[-1]["body"] == [make_metric(10, 0.9)]


def test_a_timeout_is_retried(server: ScriptedServer) -> None:
    server.script = [Delay(0.6)]
    writer = SupabaseWriter(server.url, KEY, timeout_s=0.2)
    try:
        outcome, waits = write_with_retries(writer, 2)
    finally:
        writer.close()

    assert outcome is WriteOutcome.WRITTEN and len(waits) == 1
    assert server.methods()[:2] == ["PATCH", "PATCH"]
    assert server.jobs[JOB]["scoring_version"] == 2


def test_a_refused_connection_is_retried_until_the_server_is_up() -> None:
    port = free_port()
    writer = SupabaseWriter(f"http://127.0.0.1:{port}", KEY, timeout_s=2.0)
    started: list[ScriptedServer] = []

    def start_server_while_waiting(seconds: float) -> None:
        if not started:
            stand_in = ScriptedServer(port).start()
            stand_in.jobs[JOB] = {"job_token": TOKEN, "scoring_version": None}
            started.append(stand_in)

    try:
        outcome = retrying_write(
            writer, JOB, TOKEN, make_row(1), [], 5, 1.0, sleep=start_server_while_waiting
        )
    finally:
        writer.close()
        for stand_in in started:
            stand_in.stop()

    assert outcome is WriteOutcome.WRITTEN
    assert started[0].methods() == ["PATCH"]  # the refused attempt never arrived


@pytest.mark.parametrize(
    "answer",
    [
        (400, {"code": "PGRST204", "message": "Could not find the 'loss' column", "hint": None}),
        (401, {"code": "PGRST301", "message": "JWT expired"}),
        (403, {"code": "42501", "message": "permission denied for table local_training_jobs"}),
        (
            404,
            {
                "code": "PGRST205",
                "message": "Could not find the table 'public.local_training_jobs'",
            },
        ),
        (409, {"code": "23505", "message": "duplicate key value violates unique constraint"}),
    ],
    ids=lambda answer: str(answer[0]),
)
def test_4xx_is_never_retried(
    server: ScriptedServer, writer: SupabaseWriter, answer: tuple[int, Any]
) -> None:
    server.script = [answer]

    with pytest.raises(PermanentSinkError) as caught:
        write_with_retries(writer, 1)

    assert server.methods() == ["PATCH"]  # exactly one request
    assert answer[1]["code"] in str(caught.value)
    assert TOKEN not in str(caught.value) and KEY not in str(caught.value)


# --- empty results -------------------------------------------------------------------------


def test_empty_result_of_a_stale_write_is_fine(
    server: ScriptedServer, writer: SupabaseWriter
) -> None:
    server.jobs[JOB]["scoring_version"] = 9

    outcome, waits = write_with_retries(writer, 5)

    assert outcome is WriteOutcome.STALE and waits == []
    assert server.methods() == ["PATCH", "GET"]


def test_empty_result_for_a_wrong_token_or_missing_row_is_permanent(
    server: ScriptedServer, writer: SupabaseWriter
) -> None:
    with pytest.raises(PermanentSinkError, match="token does not match"):
        retrying_write(writer, JOB, OTHER_TOKEN, make_row(1), [], 5, 1.0, sleep=pytest.fail)
    wrong_token = server.methods()
    server.requests.clear()
    with pytest.raises(PermanentSinkError, match="no row with id job-404"):
        retrying_write(writer, "job-404", TOKEN, make_row(1), [], 5, 1.0, sleep=pytest.fail)

    # One PATCH each, then the lookups that tell the cases apart: with the token, then by id.
    assert wrong_token == server.methods() == ["PATCH", "GET", "GET"]
    by_token, by_id = (dict(r["query"]) for r in server.of("GET"))
    assert by_token["id"] == "eq.job-404" and by_token["job_token"] == f"eq.{TOKEN}"
    assert by_id["id"] == "eq.job-404" and "job_token" not in by_id


@pytest.fixture
def fake() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def settings() -> Settings:
    return Settings(
        redis_url="redis://unused",
        sink_url="supabase",
        sink_retry_attempts=3,
        sink_retry_max_s=0.01,
    )


def drained_job(fake: fakeredis.FakeRedis, settings: Settings, token: str) -> None:
    register_job(fake, JOB, token)
    publish(fake, raw_run(2))
    drain_job(fake, JOB, settings)


@pytest.mark.parametrize(
    ("row", "token", "message"),
    [
        ({"job_token": TOKEN, "scoring_version": None}, OTHER_TOKEN, "token does not match"),
        (None, TOKEN, f"no row with id {JOB}"),
    ],
    ids=["wrong-token", "missing-row"],
)
def test_flush_records_a_permanent_empty_result_and_never_retries_it(
    server: ScriptedServer,
    writer: SupabaseWriter,
    fake: fakeredis.FakeRedis,
    settings: Settings,
    row: dict[str, Any] | None,
    token: str,
    message: str,
) -> None:
    server.jobs.clear()
    if row is not None:
        server.jobs[JOB] = row
    drained_job(fake, settings, token)

    result = flush.flush_job(fake, JOB, settings, writer=writer)

    assert result.outcome == "error"
    assert server.methods().count("PATCH") == 1
    state = pipeline_state(fake, JOB)  # what `ckpt-pipeline status` shows
    assert state["sink_error_kind"] == "permanent" and message in state["sink_error"]
    assert token not in state["sink_error"]
    # The version it could not write is not counted as written (issue 13): the row lags, and
    # the version is refused, not retried.
    assert state["lag_versions"] == state["state_version"] > 0
    assert Pump(fake, settings, flush=FLUSH).run_once().flushes_enqueued == 0
    assert flush.flush_job(fake, JOB, settings, writer=writer).outcome == "refused"
    assert server.methods().count("PATCH") == 1


def test_flush_of_a_stale_row_records_no_error(
    server: ScriptedServer, writer: SupabaseWriter, fake: fakeredis.FakeRedis, settings: Settings
) -> None:
    server.jobs[JOB]["scoring_version"] = 99  # another flush already wrote a newer state
    drained_job(fake, settings, TOKEN)

    result = flush.flush_job(fake, JOB, settings, writer=writer)

    assert result.outcome == "stale"
    assert pipeline_state(fake, JOB)["sink_error"] is None


def test_flush_keeps_a_persistent_5xx_transient_and_due_again(
    server: ScriptedServer, writer: SupabaseWriter, fake: fakeredis.FakeRedis, settings: Settings
) -> None:
    server.script = [(503, POSTGREST_503)] * settings.sink_retry_attempts
    drained_job(fake, settings, TOKEN)

    result = flush.flush_job(fake, JOB, settings, writer=writer)

    assert result.outcome == "error"
    assert server.methods() == ["PATCH"] * settings.sink_retry_attempts
    state = pipeline_state(fake, JOB)
    assert state["sink_error_kind"] == "transient" and state["lag_versions"] > 0
    assert Pump(fake, settings, flush=FLUSH).run_once().flushes_enqueued == 1  # tried again later
    assert flush.flush_job(fake, JOB, settings, writer=writer).outcome == "written"
    assert pipeline_state(fake, JOB)["sink_error"] is None


# --- the metrics requests --------------------------------------------------------------------


def test_metrics_requests_delete_the_steps_then_insert_them_in_chunks(
    server: ScriptedServer, writer: SupabaseWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supabase_module, "METRICS_CHUNK", 2)
    metrics = [make_metric(step, 1.0 / step) for step in (50, 10, 40, 20, 30)]

    assert writer.write(JOB, TOKEN, make_row(1), metrics) is WriteOutcome.WRITTEN

    assert server.methods() == ["PATCH"] + ["DELETE", "POST"] * 3
    deletes, inserts = server.of("DELETE"), server.of("POST")
    assert [dict(r["query"]) for r in deletes] == [
        {"job_id": f"eq.{JOB}", "step": "in.(10,20)"},
        {"job_id": f"eq.{JOB}", "step": "in.(30,40)"},
        {"job_id": f"eq.{JOB}", "step": "in.(50)"},
    ]
    assert [[m["step"] for m in r["body"]] for r in inserts] == [[10, 20], [30, 40], [50]]
    for request in deletes + inserts:
        assert request["path"] == "/rest/v1/local_training_metrics"
        assert request["headers"]["apikey"] == KEY
        assert request["headers"]["authorization"] == f"Bearer {KEY}"
        assert "return=minimal" in request["headers"]["prefer"]
    for insert in inserts:
        assert insert["headers"]["content-type"].startswith("application/json")
        assert all(set(m) == set(METRIC_COLUMN_NAMES) for m in insert["body"])
        assert TOKEN not in json.dumps(insert["body"])


def test_the_job_patch_carries_only_the_row_model_and_never_the_token(
    server: ScriptedServer, writer: SupabaseWriter
) -> None:
    writer.write(JOB, TOKEN, make_row(4), [])

    [patch] = server.of("PATCH")
    assert patch["body"] == make_row(4)
    assert "job_token" not in patch["body"] and "id" not in patch["body"]
    assert dict(patch["query"])["select"] == "id"  # the token is not sent back either
    assert patch["headers"]["content-type"].startswith("application/json")
