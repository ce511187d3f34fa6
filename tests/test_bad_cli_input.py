"""Bad input at the command line: each test is the input itself (issue 13, "Bad input without a
clear answer"). Every one must end in one clear line and a non-zero exit, and change nothing.

Servers are the private ones of ``conftest.py``; no test reaches a service on a standard port
(a PostgreSQL URL that would fall back to libpq's defaults points at a closed random port).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckpt_pipeline.cli import main
from ckpt_pipeline.testing.local_redis import LocalRedis, free_port
from producer import EventPublisher
from scorer_worker import keys
from scorer_worker.registry import register_job

ROOT = Path(__file__).resolve().parents[1]
JOB = "bad-cli-job"
INVALID_IDS = ["a b", "", "jöb", "*", "a{b", "x" * 65, "job\n"]


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout_s=60):
    """Run ``ckpt-pipeline ARGS`` as a subprocess of this checkout (whatever is installed)."""
    environment = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", *args],
        capture_output=True, text=True, env=environment, cwd=cwd or ROOT, timeout=timeout_s,
    )  # fmt: skip


def assert_one_error_line(done: subprocess.CompletedProcess, *expected: str) -> None:
    """Non-zero exit, no traceback, one ``error:`` line on stderr holding ``expected``."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    for text in expected:
        assert text in errors[0], errors[0]


def rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        try:
            return conn.execute("SELECT id FROM local_training_jobs").fetchall()
        except sqlite3.OperationalError:  # no table: nothing was inserted
            return []


def sink_file(sqlite_url: str) -> Path:
    return Path(sqlite_url.removeprefix("sqlite:///"))


# --- 1. migrate with an empty, unset or host-less URL ----------------------------------------


@pytest.fixture
def no_local_postgres(monkeypatch):
    """If anything fell back to libpq's defaults, it would meet a closed port, not 5432."""
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGPORT", str(free_port()))
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.mark.parametrize(
    "url",
    ["", "   ", "postgresql://", "postgresql:///postgres", "postgresql://u:pw-SECRET@/db",
     "postgres://u@:5/db", "dbname=postgres"],
)  # fmt: skip
def test_migrate_refuses_a_url_that_falls_back_to_the_local_database(url, no_local_postgres):
    done = cli("migrate", url, timeout_s=30)
    assert_one_error_line(done, "postgresql://user:password@host:port/database")
    assert done.returncode == 2
    assert "connecting" not in done.stderr  # refused before any connection was tried
    assert "pw-SECRET" not in done.stderr


@pytest.mark.parametrize("url", [None, "postgresql://h,/db", "postgresql://,/db"])
def test_migrate_of_a_defaulting_url_never_connects(url, no_local_postgres, monkeypatch):
    # In-process with the driver's connect replaced: an empty member of a host list falls
    # back to the local socket whatever PGHOST says, so no subprocess may try these.
    import sink.migrate

    calls = []
    monkeypatch.setattr(sink.migrate.psycopg, "connect", lambda *a, **k: calls.append(a))
    result = CliRunner().invoke(main, ["migrate", url or os.environ.get("DATABASE_URL", "")])
    assert result.exit_code == 2, result.output
    assert ("DATABASE_URL is empty" if url is None else "names no host") in result.output
    assert calls == []


# --- 2. register: invalid ids write nothing; Redis out of memory is one line ------------------


@pytest.mark.parametrize("job_id", INVALID_IDS, ids=repr)
def test_register_an_invalid_id_writes_no_row_and_no_key(
    job_id, redis_client, pipeline_env, sqlite_url
):
    done = cli("register", job_id, "tok", "--create-row")
    assert_one_error_line(done, "invalid job id")
    assert rows(sink_file(sqlite_url)) == []
    assert redis_client.keys("*") == []


def test_register_an_empty_token_writes_no_row(redis_client, pipeline_env, sqlite_url):
    done = cli("register", JOB, "", "--create-row")
    assert_one_error_line(done, "token must not be empty")
    assert rows(sink_file(sqlite_url)) == []
    assert redis_client.keys("*") == []


@pytest.fixture
def full_redis(tmp_path):
    """A private redis-server with 1 MB of memory under noeviction, filled up."""
    server = LocalRedis(
        tmp_path / "full-redis",
        extra_args=["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"],
    ).start()
    client = redis.Redis.from_url(server.url)
    try:
        for i in range(10_000):
            client.set(f"fill:{i}", "x" * 10_000)
    except redis.exceptions.OutOfMemoryError:
        pass
    else:
        pytest.fail("the server never ran out of memory")
    yield server
    client.close()
    server.stop()


def test_register_while_redis_is_out_of_memory_is_one_line_and_leaves_no_row(
    full_redis, pipeline_env, sqlite_url, monkeypatch
):
    monkeypatch.setenv("REDIS_URL", full_redis.url)
    done = cli("register", JOB, "tok-SECRET", "--create-row")
    assert_one_error_line(done, "out of memory")
    assert "tok-SECRET" not in done.stderr  # redis-py's message quotes the command
    assert rows(sink_file(sqlite_url)) == []
    assert not redis.Redis.from_url(full_redis.url).exists(keys.meta(JOB))


# --- 3. replay of a long run delivers everything, or fails --------------------------------------


def write_run(folder: Path, entries: int) -> Path:
    """A finished run's folder whose trainer_state.json has ``entries`` train logs and an end."""
    folder.mkdir(parents=True, exist_ok=True)
    history = [{"step": i, "epoch": i / entries, "loss": 1 / i} for i in range(1, entries + 1)]
    history.append({"step": entries, "epoch": 1.0, "train_runtime": 9.0, "train_loss": 0.5})
    state = {"global_step": entries, "max_steps": entries, "epoch": 1.0, "log_history": history}
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


def test_replay_of_120000_log_entries_delivers_every_event_and_the_end(
    redis_client, pipeline_env, tmp_path
):
    # More entries than the publisher's queue holds (100,000): they used to be dropped.
    run = write_run(tmp_path / "long-run", 120_000)
    done = cli("replay", JOB, str(run), timeout_s=120)
    assert done.returncode == 0, done.stderr
    assert redis_client.xlen(keys.events(JOB)) == 120_000 + 2  # begin, logs, end
    ((_, last),) = redis_client.xrevrange(keys.events(JOB), count=1)
    assert json.loads(last[b"event"])["kind"] == "train_end"
    assert "dropped" not in done.stderr


def test_replay_fails_naming_how_many_events_were_not_delivered(
    redis_client, pipeline_env, tmp_path, monkeypatch
):
    import ckpt_pipeline.cli

    # A publisher whose thread does not keep up (it sends nothing) and a queue of 10 events.
    monkeypatch.setattr(ckpt_pipeline.cli, "REPLAY_WAIT_S", 0.05)
    monkeypatch.setattr(EventPublisher, "_send_round", lambda self: None)
    original = EventPublisher.__init__
    made = []

    def small_queue(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **{**kwargs, "max_queue_events": 10})

    monkeypatch.setattr(EventPublisher, "__init__", small_queue)
    result = CliRunner().invoke(main, ["replay", JOB, str(write_run(tmp_path / "run", 30))])
    # Its thread ends at its next wake-up; wait for that while sending is still disabled, or
    # it would deliver its spool into a later test's Redis.
    for publisher in made:
        publisher._thread.join(5)
    assert result.exit_code == 2
    assert "22 of 32 events were not delivered" in result.output


def test_replay_with_redis_down_says_so_and_spools_nothing(pipeline_env, tmp_path, monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    spool = Path(os.environ["CKPT_SPOOL_DIR"])
    done = cli("replay", JOB, str(write_run(tmp_path / "run", 5)), timeout_s=30)
    assert_one_error_line(done, "Redis is unreachable")
    assert not spool.exists() or not list(spool.iterdir())


# --- 4. malformed trainer states and spool files: one line, not a traceback ------------------

BAD_STATES = {
    "a list": "[]",
    "null": "null",
    "not JSON": "this is not json",
    "binary": bytes(range(256)) * 4,
    "string entries": '{"log_history": ["loss 0.5", "eval 0.4"]}',
    "null entries": '{"log_history": [null, {"step": 1, "loss": 0.5}]}',
    "a step that is a list": '{"log_history": [{"step": [1], "loss": 0.5}]}',
    "a step that is text": '{"log_history": [{"step": "ten", "loss": 0.5}]}',
    "a global step that is text": '{"global_step": "x", "max_steps": 10, "log_history": []}',
    "an epoch that is text": '{"log_history": [{"step": 1, "epoch": "e", "eval_loss": 0.5}]}',
    "a step beyond the row": '{"log_history": [{"step": 1e30, "loss": 0.5}]}',
    "deep nesting": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("command", ["replay", "checkpoints"])
@pytest.mark.parametrize("content", list(BAD_STATES.values()), ids=list(BAD_STATES))
def test_a_malformed_trainer_state_is_one_line_naming_the_file(
    command, content, redis_client, pipeline_env, tmp_path
):
    run = tmp_path / "run"
    (run / "checkpoint-10").mkdir(parents=True)
    target = run / "checkpoint-10" / "trainer_state.json"
    target.write_bytes(content if isinstance(content, bytes) else content.encode())
    args = ["replay", JOB, str(run)] if command == "replay" else ["checkpoints", str(run)]
    done = cli(*args)
    assert_one_error_line(done, str(target))
    assert done.returncode == 2
    assert redis_client.keys("*") == []  # nothing was sent


def test_a_missing_run_folder_is_one_clear_usage_error(redis_client, pipeline_env, tmp_path):
    # click's own check (it already held before issue 13); kept beside the cases above.
    for args in (["replay", JOB, str(tmp_path / "nowhere")], ["checkpoints", str(tmp_path / "x")]):
        done = cli(*args)
        assert done.returncode == 2 and "does not exist" in done.stderr
        assert "Traceback" not in done.stderr


def spooled_events(folder: Path, count: int) -> Path:
    """Leave ``count`` train logs of JOB in a spool under ``folder``, as a crashed run would."""
    publisher = EventPublisher(
        JOB, f"redis://127.0.0.1:{free_port()}/0", spool_dir=folder, socket_timeout_s=0.2
    )
    for step in range(count):
        publisher.emit("train_log", step, None, {"loss": 1.0})
    publisher.close(timeout_s=5)
    assert publisher.spooled == count
    return folder / f"{JOB}.events.jsonl"


def test_spool_flush_of_a_binary_file_is_one_line_and_delivers_nothing(
    redis_client, pipeline_env, tmp_path
):
    spool = tmp_path / "spool-dir"
    spool.mkdir()
    (spool / f"{JOB}.events.jsonl").write_bytes(bytes(range(256)) * 64)
    done = cli("spool", "flush", str(spool))
    assert_one_error_line(done, "line 1 is not an encoded event", "nothing delivered")
    assert done.returncode == 2
    assert redis_client.keys("*") == []


@pytest.mark.parametrize("offset", ["999999", "3", "-5", "²"])
def test_spool_flush_with_a_corrupt_offset_file_delivers_everything(
    offset, redis_client, pipeline_env, tmp_path
):
    path = spooled_events(tmp_path / "spool-dir", 5)
    path.with_suffix(".offset").write_text(offset, encoding="utf-8")
    done = cli("spool", "flush", str(path.parent))
    assert done.returncode == 0, done.stderr
    assert f"{JOB}: delivered" in done.stdout
    assert "offset" in done.stderr and "Traceback" not in done.stderr  # says what was wrong
    entries = redis_client.xrange(keys.events(JOB))
    assert [json.loads(fields[b"event"])["step"] for _, fields in entries] == list(range(5))


# --- 5. surprises --------------------------------------------------------------------------------


def test_status_creates_no_database_file(redis_client, pipeline_env, tmp_path, monkeypatch):
    register_job(redis_client, JOB, "tok")
    monkeypatch.delenv("CKPT_SINK")  # the default: ./checkpoint-pipeline.db
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    done = cli("status", JOB, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert list(workdir.iterdir()) == []


def test_a_relative_sqlite_url_is_relative_to_the_working_folder(
    redis_client, pipeline_env, tmp_path, monkeypatch
):
    name = f"ckpt-relative-{uuid.uuid4().hex}.db"
    wrong = Path("/") / name  # where sqlite:///name used to go
    monkeypatch.setenv("CKPT_SINK", f"sqlite:///{name}")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    try:
        done = cli("register", JOB, "tok", "--create-row", cwd=workdir)
        assert done.returncode == 0, done.stderr
        assert rows(workdir / name) == [(JOB,)]
        assert not wrong.exists()
    finally:
        wrong.unlink(missing_ok=True)


def test_status_of_an_unknown_job_exits_non_zero(redis_client, pipeline_env):
    done = cli("status", "never-registered")
    assert_one_error_line(done, "unknown job 'never-registered'")
    assert done.returncode == 2
    json_done = cli("status", "never-registered", "--json")
    assert json_done.returncode == 2 and json_done.stdout == ""


def test_work_burst_with_redis_down_says_so_at_once(pipeline_env, monkeypatch):
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    done = cli("work", "--burst", timeout_s=20)  # it used to wait 60 s without a word
    assert_one_error_line(done, "Redis is unreachable")
    assert done.returncode == 2 and time.monotonic() - started < 15


# --- fuzz: odd ids, paths and file contents never end in a traceback ------------------------

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
log_entries = st.dictionaries(
    st.sampled_from(["step", "epoch", "loss", "eval_loss", "train_runtime", "learning_rate"]),
    json_values,
)
trainer_states = st.fixed_dictionaries(
    {},
    optional={
        "global_step": json_values,
        "max_steps": json_values,
        "epoch": json_values,
        "num_train_epochs": json_values,
        "log_history": st.lists(log_entries | json_values, max_size=6) | json_values,
    },
)
state_contents = (
    trainer_states.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=40)
    | st.binary(max_size=200)
)
file_names = st.text(
    st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)


@pytest.fixture
def fuzz_env(redis_server, tmp_path_factory):
    """The environment of an in-process CLI call: the private Redis, a SQLite file."""
    folder = tmp_path_factory.mktemp("fuzz")
    return {
        "REDIS_URL": redis_server.url,
        "CKPT_SINK": f"sqlite:///{folder / 'jobs.db'}",
        "CKPT_SPOOL_DIR": str(folder / "spool"),
    }


def invoke(env: dict[str, str], *args: str):
    """Call the CLI in-process; fail on a traceback or an error that is not one line."""
    result = CliRunner().invoke(main, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback: the bug the fuzz looks for
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output
    if result.exit_code == 2 and result.stderr.startswith("error:"):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result


def fresh(root: Path) -> Path:
    folder = root / uuid.uuid4().hex
    folder.mkdir(parents=True)
    return folder


@FUZZ
@given(content=state_contents, folder_name=st.sampled_from(["checkpoint-5", "."]))
def test_fuzz_trainer_states(content, folder_name, fuzz_env, tmp_path_factory, caplog):
    run = fresh(tmp_path_factory.getbasetemp() / "fuzz-runs")
    (run / folder_name).mkdir(exist_ok=True)
    data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
    (run / folder_name / "trainer_state.json").write_bytes(data)
    invoke(fuzz_env, "checkpoints", str(run))
    invoke(fuzz_env, "checkpoints", str(run), "--json")
    invoke(fuzz_env, "replay", "fuzz-job", str(run))
    assert not [r for r in caplog.records if r.exc_info], "a logged traceback"


@FUZZ
@given(job_id=st.text(max_size=70) | st.sampled_from(INVALID_IDS), token=st.text(max_size=8))
def test_fuzz_job_ids(job_id, token, fuzz_env):
    for args in (
        ["register", job_id, token or "t", "--create-row"],
        ["status", job_id],
        ["unregister", job_id],
        ["register", job_id, token],
    ):
        invoke(fuzz_env, *args)


@FUZZ
@given(
    name=file_names | st.just(JOB),
    content=st.binary(max_size=300) | st.lists(json_values.map(json.dumps)).map("\n".join),
    offset=st.none() | st.text(max_size=8) | st.integers(-5, 400).map(str),
)
def test_fuzz_spool_files(name, content, offset, fuzz_env, tmp_path_factory, caplog):
    spool = fresh(tmp_path_factory.getbasetemp() / "fuzz-spools")
    path = spool / f"{name}.events.jsonl"
    data = content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    if offset is not None:
        (spool / f"{name}.events.offset").write_bytes(offset.encode("utf-8", "surrogatepass"))
    invoke(fuzz_env, "spool", "flush", str(spool), "--timeout-s", "5")
    assert not [r for r in caplog.records if r.exc_info], "a logged traceback"


@FUZZ
@given(url=st.text(max_size=60) | st.sampled_from(["postgresql://", "postgres://u@/d", ""]))
def test_fuzz_migrate_urls(url, fuzz_env, monkeypatch):
    import psycopg

    import sink.migrate

    def refuse(*args, **kwargs):  # nothing the fuzz makes up may reach a real server
        raise psycopg.OperationalError("connection refused (test)")

    monkeypatch.setattr(sink.migrate.psycopg, "connect", refuse)
    result = invoke(fuzz_env, "migrate", url)
    assert result.exit_code == 2
