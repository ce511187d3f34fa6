"""A private Redis Cluster (the data side, DESIGN.md section 9) from the system binaries.

Every node is a :class:`~ckpt_pipeline.testing.local_redis.LocalRedis` in its own folder under
one temporary directory, on random ports (client and cluster bus), announcing 127.0.0.1. The
cluster is built by hand (slots, MEET, REPLICATE) rather than with ``redis-cli --cluster
create``: that way every step can be waited on, and a node can join later the same way.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ckpt_pipeline.testing.convergence import wait_until
from ckpt_pipeline.testing.local_redis import LocalRedis, free_ports


class ClusterNode(LocalRedis):
    """One cluster node: a :class:`LocalRedis` with a cluster bus port and a node id.

    Args:
        directory: the node's working folder (``nodes.conf`` and the AOF live there).
        bus_port: its cluster bus port (the ``--cluster-port`` in its arguments).
        **kwargs: the :class:`LocalRedis` arguments.
    """

    def __init__(self, directory: Path, *, bus_port: int, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.bus_port = bus_port
        self.node_id = ""

    def start(self, timeout_s: float = 10.0) -> ClusterNode:
        """Start the node and read its node id.

        Raises:
            RuntimeError: the server exited.
            TimeoutError: it did not answer within ``timeout_s``.
        """
        super().start(timeout_s)
        with self.client(decode_responses=True) as client:
            self.node_id = client.execute_command("CLUSTER MYID")
        return self

    def view(self) -> dict[str, dict[str, Any]]:
        """This node's ``CLUSTER NODES``, keyed by ``"127.0.0.1:port"`` (redis-py's parsing)."""
        with self.client(decode_responses=True, socket_timeout=2) as client:
            return client.cluster("NODES")

    def state_ok(self) -> bool:
        """Whether the node answers and reports ``cluster_state:ok``."""
        try:
            with self.client(decode_responses=True, socket_timeout=2) as client:
                return client.cluster("INFO")["cluster_state"] == "ok"
        except redis.RedisError:
            return False


class LocalCluster:
    """Start and stop a private Redis Cluster: masters, each with its replicas, all synced.

    Args:
        directory: the folder for the nodes' folders (a temporary one, removed on stop, by
            default; a given one is kept, logs included).
        masters: how many masters share the 16384 slots.
        replicas_per_master: how many replicas each master has.
        node_timeout_ms: ``cluster-node-timeout``; short, so that a failover takes seconds.
        extra_args: more ``redis-server`` arguments for every node, e.g. ``["--aclfile", p]``.
        username: the user the fixture and :meth:`client` log in as (for an ACL file that
            turns the default user off).
        password: that user's password.

    Raises:
        FileNotFoundError: when no ``redis-server`` binary is on the PATH.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        masters: int = 3,
        replicas_per_master: int = 1,
        node_timeout_ms: int = 1000,
        extra_args: list[str] | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ckpt-cluster-"))
        self.master_count = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = extra_args or []
        self.username = username
        self.password = password
        self.nodes: list[ClusterNode] = []

    @property
    def url(self) -> str:
        """The URL of a live master (another one after that one failed)."""
        return self.masters()[0].url

    def masters(self) -> list[ClusterNode]:
        """The live nodes that are masters now (an empty master :meth:`add_master` made too)."""
        return [node for node in self.nodes if node.role == "master"]

    def client(self, **kwargs: Any) -> RedisCluster:
        """A cluster client that starts from a live master.

        Args:
            **kwargs: more :class:`redis.cluster.RedisCluster` arguments.

        Returns:
            A new client; close it when done.
        """
        credentials = {"username": self.username, "password": self.password}
        return RedisCluster(host="127.0.0.1", port=self.masters()[0].port, **credentials, **kwargs)

    def start(self, timeout_s: float = 30.0) -> LocalCluster:
        """Start the nodes, build the cluster and wait until it is whole.

        Whole: every node reports ``cluster_state:ok`` and knows every other node, and every
        replica follows its master with the first sync done. On any failure the nodes already
        started are stopped (their folders kept, for the logs) before the error propagates.

        Raises:
            RuntimeError: a node exited.
            TimeoutError: the cluster was not whole within ``timeout_s``.
        """
        try:
            count = self.master_count * (1 + self.replicas_per_master)
            for _ in range(count):
                self._new_node().start()
            masters = self.nodes[: self.master_count]
            for index, master in enumerate(masters):
                first, last = _slot_range(index, self.master_count)
                with master.client() as client:
                    # Distinct epochs up front, as redis-cli does, so no collision to resolve.
                    client.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
                    client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                self._meet(node)
            wait_until(self._all_known, timeout_s, what="every node to know every node")
            replicas = self.nodes[self.master_count :]
            for index, replica in enumerate(replicas):
                master = masters[index // self.replicas_per_master]
                with replica.client() as client:
                    client.execute_command("CLUSTER REPLICATE", master.node_id)
            wait_until(self._whole, timeout_s, what="the cluster to be whole")
        except BaseException:
            self.stop(keep_directory=True)  # its logs say why
            raise
        return self

    def stop(self, *, keep_directory: bool = False) -> None:
        """Stop every node and remove the temporary directory (if this object made it).

        Args:
            keep_directory: keep even a temporary directory (to read the logs).
        """
        for node in self.nodes:
            node.stop()
        if self._owns_directory and not keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def kill_master_of(self, key: str | bytes) -> ClusterNode:
        """Kill (SIGKILL) the master that serves ``key``'s slot.

        Args:
            key: a key (its hash tag decides the slot).

        Returns:
            The killed node.
        """
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        owner = self._owner_of(slot)
        owner.kill()
        return owner

    def wait_for_failover(self, node: ClusterNode, timeout_s: float = 15.0) -> float:
        """Wait until ``node``'s slots moved to a promoted replica and the cluster is ok again.

        Args:
            node: a master that was killed (:meth:`kill_master_of`).
            timeout_s: how long to wait.

        Returns:
            The seconds this call waited.

        Raises:
            TimeoutError: no replica took over within ``timeout_s``.
        """
        address = f"127.0.0.1:{node.port}"

        def taken_over() -> bool:
            live = [other for other in self.nodes if other.running]
            try:
                return all(
                    other.state_ok() and not other.view()[address]["slots"] for other in live
                )
            except (redis.RedisError, KeyError):
                return False

        started = time.monotonic()
        return wait_until(taken_over, timeout_s, what=f"a replica to take over {address}") - started

    def add_master(self, timeout_s: float = 15.0) -> ClusterNode:
        """Start a new empty master (no slots) and join it to the cluster.

        Args:
            timeout_s: how long to wait until every node knows it and it reports ok.

        Returns:
            The new node.

        Raises:
            TimeoutError: it did not join within ``timeout_s``.
        """
        node = self._new_node().start()
        self._meet(node)
        wait_until(self._all_known, timeout_s, what=f"node {node.port} to join")
        wait_until(node.state_ok, timeout_s, what=f"node {node.port} to report ok")
        return node

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _new_node(self) -> ClusterNode:
        port, bus_port = free_ports(2)
        cluster_args = [
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-port", str(bus_port), "--cluster-announce-ip", "127.0.0.1",
            "--appendfsync", "everysec",
            # 7.0 waits 5 s by default before a diskless full sync, to batch replicas.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        node = ClusterNode(
            self.directory / f"node-{len(self.nodes)}",
            bus_port=bus_port,
            port=port,
            appendonly=True,
            extra_args=[*cluster_args, *self.extra_args],
            username=self.username,
            password=self.password,
        )
        # Listed before it starts, so that stop() covers a node that failed half-way.
        self.nodes.append(node)
        return node

    def _meet(self, node: ClusterNode) -> None:
        introducer = next(other for other in self.nodes if other.running and other is not node)
        with introducer.client() as client:
            client.execute_command("CLUSTER MEET", "127.0.0.1", node.port, node.bus_port)

    def _all_known(self) -> bool:
        """Whether every live node lists exactly the live nodes, none still in handshake."""
        live = [node for node in self.nodes if node.running]
        ids = {node.node_id for node in live}
        try:
            for node in live:
                entries = node.view().values()
                known = {e["node_id"] for e in entries if "fail" not in e["flags"]}
                if known != ids or any("handshake" in e["flags"] for e in entries):
                    return False
        except redis.RedisError:
            return False
        return True

    def _whole(self) -> bool:
        """Whether every node is ok and sees every replica follow its master, sync done."""
        replicas = self.nodes[self.master_count :]
        expected = {
            f"127.0.0.1:{replica.port}": self.nodes[index // self.replicas_per_master].node_id
            for index, replica in enumerate(replicas)
        }
        try:
            for node in self.nodes:
                view = node.view()
                if not node.state_ok() or any(
                    view[address]["master_id"] != master_id
                    for address, master_id in expected.items()
                ):
                    return False
        except (redis.RedisError, KeyError):
            return False
        return all(replica.replica_synced() for replica in replicas)

    def _owner_of(self, slot: int) -> ClusterNode:
        by_port = {node.port: node for node in self.nodes}
        viewer = next(node for node in self.nodes if node.running)
        for address, entry in viewer.view().items():
            if "master" in entry["flags"] and "fail" not in entry["flags"]:
                for first, last in entry["slots"]:
                    if int(first) <= slot <= int(last):
                        return by_port[int(address.rsplit(":", 1)[1])]
        raise LookupError(f"no live master serves slot {slot}")


def _slot_range(index: int, count: int) -> tuple[int, int]:
    """The ``index``-th of ``count`` contiguous, near-equal slot ranges (first, last)."""
    first = index * REDIS_CLUSTER_HASH_SLOTS // count
    return first, (index + 1) * REDIS_CLUSTER_HASH_SLOTS // count - 1
