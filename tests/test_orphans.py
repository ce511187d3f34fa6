"""ReapingConnection: a connection dropped without the server hearing of it (a blackholed
link) is closed on the server by the process's next connection, so its blocking BLMOVE
cannot swallow the next task.

The orphan is made for real: the client forgets a connected socket without shutting it
down (it stays open, as a socket behind a dropped link does from the server's side).
"""

from __future__ import annotations

import socket
import time
from collections import deque

import pytest
import redis
from redis.connection import Connection, ConnectionPool

from scorer_worker.connection import RetryingRedis
from scorer_worker.orphans import ReapingConnection
from scorer_worker.settings import Settings


class _Forgotten:
    """Stands in for a socket the client gave up: closing it does not reach the server."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real

    def shutdown(self, how: int) -> None:
        pass

    def close(self) -> None:
        pass


def orphan_blocked_consumer(pool: ConnectionPool, queue: str) -> tuple[int, socket.socket]:
    """Start a BLMOVE on a connection of ``pool``, then drop it client-side only."""
    connection = pool.get_connection()
    connection.send_command("CLIENT", "ID")
    client_id = int(connection.read_response())
    connection.send_command("BLMOVE", queue, f"{queue}:intermediate", "LEFT", "RIGHT", 0)
    real = connection._sock
    connection._sock = _Forgotten(real)
    connection.disconnect()
    return client_id, real  # the caller keeps the real socket open, as a dead link would


def client_ids(observer: redis.Redis) -> set[int]:
    return {int(entry["id"]) for entry in observer.client_list()}


def wait_blocked(observer: redis.Redis, client_id: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if any(int(c["id"]) == client_id and "b" in c["flags"] for c in observer.client_list()):
            return
        time.sleep(0.01)
    raise AssertionError("the BLMOVE never blocked")


@pytest.mark.parametrize("connection_class", [ReapingConnection, Connection])
def test_a_dead_blocked_consumer_swallows_the_next_task_unless_reaped(
    redis_server, redis_client, connection_class
) -> None:
    queue = f"q-{connection_class.__name__}"
    pool = ConnectionPool.from_url(redis_server.url, connection_class=connection_class)
    dead_id, real = orphan_blocked_consumer(pool, queue)
    try:
        wait_blocked(redis_client, dead_id)
        live = redis.Redis(connection_pool=pool)
        live.ping()  # the next connection of the process
        reaped = dead_id not in client_ids(redis_client)
        redis_client.lpush(queue, "task")
        got = live.blmove(queue, f"{queue}:intermediate", 1, "LEFT", "RIGHT")
        if connection_class is ReapingConnection:
            assert reaped and got == b"task"
        else:  # what happened before: the dead connection took the task
            assert not reaped and got is None
            assert redis_client.lrange(f"{queue}:intermediate", 0, -1) == [b"task"]
        live.close()
    finally:
        real.close()
        redis_client.delete(queue, f"{queue}:intermediate")


def test_an_id_reused_by_another_client_is_not_killed(redis_server, redis_client) -> None:
    pool = ConnectionPool.from_url(redis_server.url, connection_class=ReapingConnection)
    bystander = redis.Redis.from_url(redis_server.url)
    bystander_id = bystander.client_id()
    # As if this process had lost a connection with the same id at another address (the
    # server restarted and gave the id to someone else).
    key = (pool.connection_kwargs.get("host"), pool.connection_kwargs.get("port"), None)
    ReapingConnection._orphans.setdefault(key, deque()).append((bystander_id, "10.255.255.1:1"))
    redis.Redis(connection_pool=pool).ping()
    assert bystander_id in client_ids(redis_client)
    assert bystander.ping()
    bystander.close()


def test_the_workers_connection_class_reaps(redis_server) -> None:
    client = RetryingRedis.from_url(redis_server.url, settings=Settings())
    assert client.connection_pool.connection_class is ReapingConnection
    assert client.ping()
    unix = RetryingRedis.from_url("unix:///tmp/none.sock", settings=Settings())
    assert unix.connection_pool.connection_class is not ReapingConnection
