"""LocalSentinel: a real Sentinel-watched primary and replica, and their failover."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.sentinel import Sentinel

from ckpt_pipeline.testing.local_sentinel import LocalSentinel

pytestmark = pytest.mark.slow


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[LocalSentinel]:
    """A primary, its replica and three sentinels, for one test."""
    with LocalSentinel(tmp_path / "sentinel") as started:
        yield started


def test_the_url_names_every_sentinel_and_the_service(tmp_path: Path) -> None:
    topology = LocalSentinel(tmp_path, service_name="queue")  # not started: ports are chosen
    ports = [port for _host, port in topology.sentinel_addresses]
    assert len(set(ports)) == 3
    hosts = ",".join(f"127.0.0.1:{port}" for port in ports)
    assert topology.url == f"redis+sentinel://{hosts}/queue/0"


def test_a_killed_primary_is_replaced_and_clients_follow(sentinel: LocalSentinel) -> None:
    first, second = sentinel.servers
    assert sentinel.primary() is first
    assert first.role == "master" and second.role == "slave"

    client = Sentinel(sentinel.sentinel_addresses, socket_timeout=1)
    primary = client.master_for(sentinel.service_name, socket_timeout=1)
    try:
        pipe = primary.pipeline(transaction=False)  # WAIT counts this connection's writes
        pipe.set("rq:queue:scoring", "job-1")
        pipe.execute_command("WAIT", 1, 0)
        assert pipe.execute() == [True, 1]

        killed = sentinel.kill_primary()
        assert killed is first and not first.running
        seconds = sentinel.wait_for_failover(killed.port, timeout_s=20)
        assert 0 < seconds < 20

        assert sentinel.primary() is second
        assert second.role == "master"
        assert client.discover_master(sentinel.service_name) == ("127.0.0.1", second.port)
        # The client made before the kill reconnects to the new primary through the sentinels.
        assert primary.get("rq:queue:scoring") == b"job-1"
        assert primary.connection_pool.get_master_address() == ("127.0.0.1", second.port)
    finally:
        primary.close()
