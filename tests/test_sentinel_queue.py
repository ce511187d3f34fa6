"""The queue side behind Sentinel: ``redis+sentinel://`` URLs, clients that follow the primary
through a failover, a real ``rq worker`` that keeps working across one, and the CLI."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.sentinel import SentinelConnectionPool
from rq import Queue
from rq.job import Job, JobStatus

from ckpt_pipeline.testing.convergence import wait_until
from ckpt_pipeline.testing.local_redis import free_port
from ckpt_pipeline.testing.local_sentinel import LocalSentinel
from ckpt_pipeline.testing.pipeline import WORKERS_KEY
from ckpt_pipeline.testing.processes import REPO, Proc, pipeline_env, role_command
from producer.redaction import mask_url, redact
from scorer_worker.connection import RetryingRedis, connect, outage_retry, probe
from scorer_worker.errors import ConfigError
from scorer_worker.registry import register_job
from scorer_worker.sentinel import (
    DEFAULT_SENTINEL_PORT,
    DEFAULT_SENTINEL_TIMEOUT_S,
    PrimaryFollowingConnection,
    SentinelURL,
    SentinelURLError,
    close_client,
    is_sentinel_url,
    parse_sentinel_url,
)
from scorer_worker.settings import Settings

FORM_HINT = "the form is redis+sentinel://"

# --- parsing (no server) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://127.0.0.1:26380,127.0.0.1:26381/ckpt/0",
            SentinelURL((("127.0.0.1", 26380), ("127.0.0.1", 26381)), "ckpt", 0),
        ),
        ("redis+sentinel://s1:1/queue", SentinelURL((("s1", 1),), "queue", 0)),
        ("redis+sentinel://s1:1/queue/", SentinelURL((("s1", 1),), "queue", 0)),
        ("REDIS+Sentinel://s1:1/queue/7/", SentinelURL((("s1", 1),), "queue", 7)),
        ("redis+sentinel://s1/q", SentinelURL((("s1", DEFAULT_SENTINEL_PORT),), "q", 0)),
        ("redis+sentinel://[::1]:5,h:6/q/2", SentinelURL((("::1", 5), ("h", 6)), "q", 2)),
        (
            "redis+sentinel://worker:p%40ss%3Aw@h:1/my%20svc/3"
            "?sentinel_username=sen&sentinel_password=s%26cret&sentinel_timeout_s=0.25",
            SentinelURL((("h", 1),), "my svc", 3, "worker", "p@ss:w", "sen", "s&cret", 0.25),
        ),
        ("redis+sentinel://:only-pw@h:1/q", SentinelURL((("h", 1),), "q", 0, None, "only-pw")),
        ("redis+sentinel://user@h:1/q", SentinelURL((("h", 1),), "q", 0, "user", None)),
    ],
)
def test_sentinel_urls_parse(url: str, expected: SentinelURL) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("redis://h:1/0", "is not a redis+sentinel:// URL"),
        ("sentinel://h:1/q", "is not a redis+sentinel:// URL"),
        ("redis+sentinel://h:1", "names no service"),
        ("redis+sentinel://h:1/", "names no service"),
        ("redis+sentinel://h:1//0", "names no service"),
        ("redis+sentinel:///q", "names no sentinel"),
        ("redis+sentinel://u:pw@/q", "names no sentinel"),
        ("redis+sentinel://h:1,,h:2/q", "malformed sentinel address ''"),
        ("redis+sentinel://h:1,h:2:3/q", "bad port in sentinel address 'h:2:3'"),
        ("redis+sentinel://h:port/q", "bad port in sentinel address 'h:port'"),
        ("redis+sentinel://h:0/q", "bad port"),
        ("redis+sentinel://h:65536/q", "bad port"),
        ("redis+sentinel://[::1/q", "malformed sentinel address"),
        ("redis+sentinel://h:1/q/zero", "has database 'zero'"),
        ("redis+sentinel://h:1/q/-1", "has database '-1'"),
        ("redis+sentinel://h:1/q/0/extra", "has 3 path parts"),
        ("redis+sentinel://h:1/q?db=2", "unknown option 'db'"),
        ("redis+sentinel://h:1/q?sentinel_timeout_s=0", "give seconds, more than 0"),
        ("redis+sentinel://h:1/q?sentinel_timeout_s=soon", "give seconds, more than 0"),
        ("redis+sentinel://h:1/q?sentinel_timeout_s=nan", "give seconds, more than 0"),
        ("redis+sentinel://h:1/q?sentinel_password=", "gives option 'sentinel_password' no"),
        ("redis+sentinel://h:1/q?sentinel_username=a&sentinel_username=b", "twice"),
        ("redis+sentinel://h:1/q?novalue", "malformed ?query"),
        ("redis+sentinel://h:1/q#top", "#fragment"),
    ],
)
def test_malformed_sentinel_urls_are_refused_saying_why(url: str, problem: str) -> None:
    with pytest.raises(SentinelURLError) as caught:
        parse_sentinel_url(url)
    message = str(caught.value)
    assert problem in message
    assert FORM_HINT in message
    # Both kinds of caller catch it: the project's config errors, and from_url's ValueError.
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, ValueError)


def test_error_messages_and_reprs_never_show_a_password() -> None:
    url = "redis+sentinel://u:hunter22@h:1/q/x?sentinel_password=swordfish9"
    with pytest.raises(SentinelURLError) as caught:
        parse_sentinel_url(url)
    assert "hunter22" not in str(caught.value) and "swordfish9" not in str(caught.value)
    parsed = parse_sentinel_url(url.replace("/q/x", "/q/1"))
    assert parsed.password == "hunter22" and parsed.sentinel_password == "swordfish9"
    assert "hunter22" not in repr(parsed) and "swordfish9" not in repr(parsed)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://u:hunter22@h1:1,h2:2/q/0",
        "redis+sentinel://:hunter22@h1:1/q?sentinel_password=hunter22",
        "redis+sentinel://h1:1,h2:2/q/0?sentinel_username=s&sentinel_password=hunter22",
    ],
)
def test_mask_url_and_redact_hide_sentinel_url_passwords(url: str) -> None:
    # Operator output (error lines, status) goes through these two.
    for shown in (mask_url(url), redact(f"cannot reach {url} now")):
        assert "hunter22" not in shown
        assert "h1:1" in shown  # the sentinels stay readable
    assert "/q" in mask_url(url)


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_plain_urls_still_open_plain_clients(scheme: str) -> None:
    client = RetryingRedis.from_url(f"{scheme}://127.0.0.1:1/3", settings=Settings())
    assert type(client.connection_pool) is redis.ConnectionPool
    assert client.connection_pool.connection_kwargs["db"] == 3
    assert not is_sentinel_url(f"{scheme}://127.0.0.1:1/3")


def test_a_sentinel_url_opens_a_client_of_the_primary_with_the_outage_retry() -> None:
    # from_url connects lazily: the topology of the client is checked without a server.
    url = "redis+sentinel://u:pw@127.0.0.1:1,127.0.0.1:2/svc/4?sentinel_timeout_s=0.2"
    client = RetryingRedis.from_url(url, settings=Settings(redis_retry_s=7.5))
    pool = client.connection_pool
    assert isinstance(client, RetryingRedis) and isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "svc" and pool.is_master
    # The connection class that asks the sentinels on every reconnect (redis-py #3874).
    assert pool.connection_class is PrimaryFollowingConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (4, "u", "pw")
    assert kwargs["retry"].get_retries() == outage_retry(7.5).get_retries()
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    for sentinel in sentinels:
        options = sentinel.connection_pool.connection_kwargs
        assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.2
        assert options["retry"].get_retries() == 0  # the next sentinel is the retry
    assert parse_sentinel_url(url.split("?")[0]).sentinel_timeout_s == DEFAULT_SENTINEL_TIMEOUT_S
    close_client(client)


def test_connect_and_probe_refuse_a_malformed_sentinel_url_before_any_io() -> None:
    settings = Settings(redis_url="redis+sentinel://127.0.0.1:1")
    for opener in (connect, probe):
        with pytest.raises(SentinelURLError, match="names no service"):
            opener(settings)
    with pytest.raises(SentinelURLError, match="names no service"):
        RetryingRedis.from_url(settings.redis_url, settings=settings)


# --- a real primary, replica and three sentinels ------------------------------------------


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A fresh primary, replica and three sentinels (a test may kill the primary)."""
    with LocalSentinel(tmp_path / "sentinel") as started:
        yield started


def replicated(sentinel: LocalSentinel) -> None:
    """Wait until the replica holds every write the primary has taken so far."""
    primary = sentinel.primary()
    (replica,) = [server for server in sentinel.servers if server is not primary]
    with primary.client(decode_responses=True) as client:
        offset = int(client.info("replication")["master_repl_offset"])

    def caught_up() -> bool:
        with replica.client(decode_responses=True) as client:
            return int(client.info("replication")["slave_repl_offset"]) >= offset

    wait_until(caught_up, 10, what="the replica to catch up")


@pytest.mark.slow
def test_the_same_clients_follow_the_new_primary_after_a_failover(
    sentinel: LocalSentinel,
) -> None:
    # A short budget: a client stuck on the old primary's address fails within the test.
    settings = Settings(redis_url=sentinel.url, redis_retry_s=15)
    riding = connect(settings, ride_out_outages=True)
    blocked = connect(settings, ride_out_outages=True)
    one_shot = connect(settings)
    popped: list[bytes | None] = []
    try:
        assert riding.set("before", "1") and one_shot.get("before") == b"1"
        replicated(sentinel)
        first_port = riding.connection_pool.get_master_address()[1]
        # In flight when the primary dies: its socket breaks under it, and the retry must
        # reconnect to the promoted replica, not to the address the connection had.
        waiter = threading.Thread(target=lambda: popped.append(blocked.blmove("in", "out", 30)))
        waiter.start()
        wait_until(lambda: int(one_shot.info("clients")["blocked_clients"]) == 1, 10)

        killed = sentinel.kill_primary()
        assert killed.port == first_port
        started = time.monotonic()
        # Issued with the primary gone: it waits for the promotion instead of failing.
        assert riding.incr("during") == 1
        waited_s = time.monotonic() - started
        sentinel.wait_for_failover(killed.port)
        new_port = sentinel.primary().port
        riding.lpush("in", "job")
        waiter.join(10)

        assert popped == [b"job"], "the blocked command did not follow the new primary"
        assert waited_s > 0.5, "the command did not wait for a promotion"
        assert riding.connection_pool.get_master_address() == ("127.0.0.1", new_port)
        assert riding.get("before") == b"1" and riding.set("after", "2")
        # The one-shot client made before the kill reconnects on its next command too.
        assert one_shot.get("after") == b"2" and one_shot.get("during") == b"1"
        assert new_port != first_port
    finally:
        for client in (riding, blocked, one_shot):
            close_client(client)


def worker_process(role: str, url: str, env: dict[str, str], folder: Path) -> Proc:
    """The Procfile's ``role`` worker (its ``RetryingRedis`` connection class), ``--url`` given."""
    args = [*role_command(role, url), "--url", url]
    assert "scorer_worker.connection.RetryingRedis" in args
    return Proc(role, 0, args, env, folder)


@pytest.mark.slow
def test_rq_workers_process_jobs_from_before_and_after_a_failover_without_restart(
    sentinel: LocalSentinel, tmp_path: Path
) -> None:
    client = connect(Settings(redis_url=sentinel.url))
    env = pipeline_env(
        sentinel.url, f"sqlite:///{tmp_path / 'jobs.db'}", settings={"redis_retry_s": 30}
    )
    # One busy when the primary dies (in a task), one idle (blocked waiting for a task).
    busy = worker_process("scoring", sentinel.url, env, tmp_path / "logs").start()
    idle = worker_process("sink", sentinel.url, env, tmp_path / "logs").start()
    workers = (busy, idle)
    try:
        wait_until(lambda: client.scard(WORKERS_KEY) == 2, 60, what="two rq workers")
        scoring, sink = Queue("scoring", connection=client), Queue("sink", connection=client)
        running = scoring.enqueue("time.sleep", 1.5)  # in progress when the primary dies
        waiting = scoring.enqueue("os.getpid")  # enqueued before the kill, run after it
        wait_until(lambda: running.get_status(refresh=True) == JobStatus.STARTED, 30)
        replicated(sentinel)

        killed = sentinel.kill_primary()
        failover_s = sentinel.wait_for_failover(killed.port)
        promoted_at = time.monotonic()
        after = [scoring.enqueue("os.getpid"), sink.enqueue("os.getpid")]

        def finished() -> bool:
            for worker in workers:
                assert worker.alive, worker.log_tail()
            return all(
                Job.fetch(job.id, connection=client).get_status() == JobStatus.FINISHED
                for job in (running, waiting, *after)
            )

        wait_until(finished, 40, 0.1, "the jobs to finish")
        # Well within the 30 s retry budget: neither worker kept trying the dead primary.
        assert time.monotonic() - promoted_at < 15
        results = [Job.fetch(job.id, connection=client).return_value() for job in (waiting, *after)]
        assert results == [busy.pid, busy.pid, idle.pid]
        for worker in workers:
            assert worker.alive and worker.starts == 1, worker.log_tail()
        assert sentinel.primary().port != killed.port
        print(f"replica promoted {failover_s:.1f} s after the kill")
        for worker in workers:  # a warm shutdown of an idle worker ends its BLMOVE at once
            worker.stop(timeout_s=5)
            assert worker.returncode == 0, f"{worker.name} was killed: {worker.log_tail()}"
    finally:
        for worker in workers:
            worker.stop(timeout_s=2)
        close_client(client)


@pytest.fixture(scope="module")
def steady_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    """One primary, replica and three sentinels the tests below read and never kill."""
    with LocalSentinel(tmp_path_factory.mktemp("steady-sentinel")) as started:
        yield started


def run_cli(url: str, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ckpt_pipeline.cli ARGS`` with ``REDIS_URL=url`` and a SQLite sink."""
    env = pipeline_env(url, f"sqlite:///{folder / 'jobs.db'}")
    command = [sys.executable, "-m", "ckpt_pipeline.cli", *args]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_the_cli_reads_through_the_sentinels(steady_sentinel: LocalSentinel, tmp_path) -> None:
    client = connect(Settings(redis_url=steady_sentinel.url))
    try:
        register_job(client, "sentinel-job", "tok-1")
    finally:
        close_client(client)
    done = run_cli(steady_sentinel.url, tmp_path, "status", "sentinel-job", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["pipeline"]["active"] is True

    wrong_service = steady_sentinel.url.replace("/ckpt/0", "/nope/0")
    done = run_cli(wrong_service, tmp_path, "status", "sentinel-job")
    assert done.returncode == 2
    assert done.stderr.startswith("error: Redis is unreachable") and "'nope'" in done.stderr

    malformed = steady_sentinel.url.replace("/ckpt/0", "/ckpt/x").replace("//", "//u:hunter22@")
    done = run_cli(malformed, tmp_path, "status", "sentinel-job")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "has database 'x'" in done.stderr and "hunter22" not in done.stderr


@pytest.mark.slow
def test_a_dead_or_silent_sentinel_costs_at_most_its_timeout(
    steady_sentinel: LocalSentinel,
) -> None:
    timeout_s = 0.3
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dead, silent_port = free_port(), silent.getsockname()[1]
        real = ",".join(f"{host}:{port}" for host, port in steady_sentinel.sentinel_addresses)
        url = (
            f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{silent_port},{real}/ckpt/0"
            f"?sentinel_timeout_s={timeout_s}"
        )
        settings = Settings(redis_url=url)
        started = time.monotonic()
        probe(settings)
        probe_s = time.monotonic() - started
        client = connect(settings)
        try:
            started = time.monotonic()
            assert client.ping()
            ping_s = time.monotonic() - started
        finally:
            close_client(client)
    # One timeout for the silent sentinel (the dead one refuses at once), plus slack.
    assert timeout_s * 0.9 < probe_s < timeout_s + 1.0
    assert timeout_s * 0.9 < ping_s < timeout_s + 1.0


@pytest.mark.slow
def test_no_sentinel_answering_is_an_unreachable_redis() -> None:
    dead = ",".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    settings = Settings(redis_url=f"redis+sentinel://{dead}/ckpt/0")
    for opener in (probe, lambda s: connect(s).ping()):
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="No master found for 'ckpt'"):
            opener(settings)
        # The one-shot client's own retry (redis-py's default) may ask again a few times.
        assert time.monotonic() - started < 10.0
