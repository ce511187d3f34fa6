"""Timeouts chosen on purpose: every client of Redis and PostgreSQL gets the documented
connect, read, lock, statement and idle-in-transaction limits and TCP keepalive, so that no
process hangs on a dead peer (the blackhole experiments of RELIABILITY.md show them at work).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from ckpt_pipeline.testing.local_postgres import LocalPostgres
from producer.sockets import redis_socket_options, tcp_keepalive_options
from scorer_worker.connection import RetryingRedis, connect, connect_data
from scorer_worker.errors import TransientSinkError
from scorer_worker.settings import Settings
from sink.migrate import run_migrations
from sink.writers import writer_from_settings

TUNED = {
    "CKPT_REDIS_CONNECT_TIMEOUT_S": "1.5",
    "CKPT_REDIS_SOCKET_TIMEOUT_S": "4",
    "CKPT_TCP_KEEPALIVE_IDLE_S": "3",
    "CKPT_TCP_KEEPALIVE_INTERVAL_S": "1",
    "CKPT_TCP_KEEPALIVE_COUNT": "4",
    "CKPT_TCP_USER_TIMEOUT_MS": "9000",
}


def _pool_options(client) -> dict:
    return client.connection_pool.connection_kwargs


def test_keepalive_options_are_the_linux_socket_options() -> None:
    options = tcp_keepalive_options(idle_s=3, interval_s=1, count=4, user_timeout_ms=9000)
    assert options == {
        socket.TCP_KEEPIDLE: 3,
        socket.TCP_KEEPINTVL: 1,
        socket.TCP_KEEPCNT: 4,
        socket.TCP_USER_TIMEOUT: 9000,
    }
    # The options must be accepted by a real socket (a wrong level or name raises here).
    with socket.socket() as sock:
        for option, value in options.items():
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
            assert sock.getsockopt(socket.IPPROTO_TCP, option) == value


@pytest.mark.parametrize("ride_out_outages", [False, True])
def test_every_redis_client_gets_the_settings_timeouts_and_keepalive(
    redis_server, ride_out_outages
) -> None:
    settings = Settings.from_env({**TUNED, "REDIS_URL": redis_server.url})
    queue = connect(settings, ride_out_outages=ride_out_outages)
    data = connect_data(
        settings.model_copy(update={"data_redis_url": redis_server.url.replace("/0", "/1")}),
        ride_out_outages=ride_out_outages,
    )
    for client in (queue, data):
        options = _pool_options(client)
        assert options["socket_connect_timeout"] == 1.5
        assert options["socket_timeout"] == 4
        assert options["socket_keepalive"] is True
        assert options["socket_keepalive_options"] == tcp_keepalive_options(3, 1, 4, 9000)
        assert client.ping()
        # The options reach the kernel: read them back from the connected socket.
        connection = client.connection_pool.get_connection()
        try:
            sock = connection._sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 9000
        finally:
            client.connection_pool.release(connection)
        client.close()


def test_an_explicit_option_wins_over_the_settings() -> None:
    client = RetryingRedis.from_url("redis://127.0.0.1:1/0", settings=Settings(), socket_timeout=99)
    assert _pool_options(client)["socket_timeout"] == 99
    assert _pool_options(client)["socket_connect_timeout"] == Settings().redis_connect_timeout_s
    assert redis_socket_options(1, 2)["socket_keepalive"] is True


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def database(postgres: LocalPostgres) -> str:
    url = postgres.create_database(f"t_{uuid.uuid4().hex[:16]}")
    run_migrations(url)
    return url


def _sink_settings(url: str, **values) -> Settings:
    return Settings(sink_url=url, **values)


def test_the_postgres_writer_applies_every_documented_limit(database: str) -> None:
    settings = _sink_settings(
        database,
        sink_lock_timeout_s=2.5,
        sink_statement_timeout_s=7,
        sink_idle_in_transaction_timeout_s=4,
        tcp_keepalive_idle_s=3,
        tcp_keepalive_count=4,
        tcp_user_timeout_ms=9000,
    )
    writer = writer_from_settings(settings)
    try:
        with writer._transaction() as conn:
            shown = conn.execute(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout'), "
                "current_setting('idle_in_transaction_session_timeout')"
            ).fetchone()
            parameters = conn.info.get_parameters()
        assert shown == ("2500ms", "7s", "4s")
        assert parameters["keepalives"] == "1"
        assert parameters["keepalives_idle"] == "3"
        assert parameters["keepalives_count"] == "4"
        assert parameters["tcp_user_timeout"] == "9000"
        # SET LOCAL: outside the transaction the session is back to the server's defaults.
        conn = writer._conn
        assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("0",)
    finally:
        writer.close()


def test_a_transaction_abandoned_by_its_client_is_ended_by_the_server(database: str) -> None:
    """A client cut off mid-transaction holds its row locks until the server ends the
    transaction: the idle-in-transaction timeout does, and the writer's next call
    reconnects (TransientSinkError, which the sink retries)."""
    settings = _sink_settings(database, sink_idle_in_transaction_timeout_s=1)
    writer = writer_from_settings(settings)
    try:
        with pytest.raises(TransientSinkError), writer._transaction() as conn:
            pid = conn.info.backend_pid
            conn.execute("SELECT 1 FROM local_training_jobs FOR UPDATE")
            time.sleep(2.5)  # the client goes silent inside the transaction
            conn.execute("SELECT 1")
        with psycopg.connect(database, autocommit=True) as observer:
            left = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
        assert left == (0,), "the server must end the abandoned session"
        assert writer.read_job(str(uuid.uuid4())) is None  # the next call reconnects
    finally:
        writer.close()
