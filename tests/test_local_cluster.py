"""LocalCluster: a real Redis Cluster from the system binaries, its failover and a late joiner."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster
from redis.exceptions import ClusterCrossSlotError

from ckpt_pipeline.testing.local_cluster import LocalCluster

pytestmark = pytest.mark.slow

# Two keys of one job: one hash tag, so one slot, so one script may touch both.
STATE, META = "ckpt:{job-7}:state", "ckpt:{job-7}:meta"
TWO_KEYS = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('SET', KEYS[2], ARGV[1])"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster the tests below leave whole (none of them kills a node)."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as started:
        yield started


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A cluster for one test that breaks it."""
    with LocalCluster(tmp_path / "cluster") as started:
        yield started


def test_three_masters_each_with_a_synced_replica_share_all_slots(cluster: LocalCluster) -> None:
    assert [node.role for node in cluster.nodes[:6]] == ["master"] * 3 + ["slave"] * 3
    holders = [n for n in cluster.nodes if n.view()[f"127.0.0.1:{n.port}"]["slots"]]
    assert holders == cluster.nodes[:3]
    for node in cluster.nodes:
        with node.client(decode_responses=True) as client:
            info = client.cluster("INFO")
        assert info["cluster_state"] == "ok"
        assert int(info["cluster_slots_assigned"]) == 16384
    for master in cluster.nodes[:3]:
        with master.client(decode_responses=True) as client:
            assert client.info("replication")["connected_slaves"] == 1
    assert all(replica.replica_synced() for replica in cluster.nodes[3:6])


def test_jobs_spread_over_the_masters_and_a_job_stays_in_one_slot(cluster: LocalCluster) -> None:
    client = RedisCluster.from_url(cluster.url)
    try:
        owners = {client.get_node_from_key(f"ckpt:{{job-{i}}}:state").port for i in range(60)}
        assert owners == {node.port for node in cluster.nodes[:3]}

        assert client.eval(TWO_KEYS, 2, STATE, META, "v1")
        assert client.get(STATE) == client.get(META) == b"v1"
    finally:
        client.close()
    # A script over two jobs' keys is what the hash tags rule out; the server refuses it too.
    with cluster.nodes[0].client() as direct, pytest.raises(ClusterCrossSlotError):
        direct.eval(TWO_KEYS, 2, STATE, "ckpt:{job-8}:meta", "v2")


def test_a_killed_master_is_replaced_by_its_replica_with_the_data(
    own_cluster: LocalCluster,
) -> None:
    replica_ports = {node.port for node in own_cluster.nodes[3:]}
    client = own_cluster.client()
    try:
        owner_port = client.get_node_from_key(STATE).port
        owner = next(node for node in own_cluster.nodes if node.port == owner_port)
        with owner.client() as direct:
            pipe = direct.pipeline(transaction=False)  # WAIT counts this connection's writes
            pipe.hset(STATE, mapping={"version": 3, "best": "ckpt-300"})
            pipe.execute_command("WAIT", 1, 0)
            assert pipe.execute()[1] == 1

        killed = own_cluster.kill_master_of(STATE)
        assert killed is owner
        assert not killed.running and killed.role is None
        seconds = own_cluster.wait_for_failover(killed, timeout_s=15)
        assert 0 < seconds < 15

        # The client made before the kill finds the new owner by itself.
        assert client.hgetall(STATE) == {b"version": b"3", b"best": b"ckpt-300"}
        new_owner = client.get_node_from_key(STATE).port
        assert new_owner in replica_ports
        assert len(own_cluster.masters()) == 3
        assert new_owner in {node.port for node in own_cluster.masters()}
    finally:
        client.close()


def test_a_new_master_joins_and_every_node_lists_it(cluster: LocalCluster) -> None:
    joined = cluster.add_master()
    address = f"127.0.0.1:{joined.port}"
    assert joined.role == "master"
    assert joined in cluster.masters()
    for node in cluster.nodes:
        entry = node.view()[address]
        assert entry["node_id"] == joined.node_id
        assert "master" in entry["flags"] and "handshake" not in entry["flags"]
        assert entry["slots"] == []  # empty: it joined, nothing was resharded
    with joined.client(decode_responses=True) as client:
        assert int(client.cluster("INFO")["cluster_known_nodes"]) == 7
