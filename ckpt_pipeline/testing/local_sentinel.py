"""A private Sentinel-watched primary and replica (the queue side, DESIGN.md section 9).

A primary, a replica following it, and three sentinels (quorum two), each a
:class:`~ckpt_pipeline.testing.local_redis.LocalRedis` in its own folder under one temporary
directory, on random ports. Short timeouts, so that a failover takes seconds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import redis

from ckpt_pipeline.testing.convergence import wait_until
from ckpt_pipeline.testing.local_redis import LocalRedis, free_ports


class LocalSentinel:
    """Start and stop a primary, a replica and three sentinels that watch them.

    Args:
        directory: the folder for the servers' folders (a temporary one, removed on stop, by
            default; a given one is kept, logs included).
        service_name: the name the sentinels monitor the primary under.
        down_after_ms: ``down-after-milliseconds``: silence before a sentinel calls it down.
        failover_timeout_ms: ``failover-timeout`` (a failed election is retried after twice it).
        appendonly: AOF persistence on the data servers.

    Raises:
        FileNotFoundError: when no ``redis-server`` binary is on the PATH.
    """

    sentinel_count = 3
    quorum = 2

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        service_name: str = "ckpt",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        appendonly: bool = True,
    ) -> None:
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ckpt-sentinel-"))
        self.service_name = service_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        primary_port, replica_port, *sentinel_ports = free_ports(2 + self.sentinel_count)
        # 7.0 waits 5 s by default before a diskless full sync, to batch replicas.
        data_args = ["--repl-diskless-sync-delay", "0"]
        self.servers = [
            LocalRedis(
                self.directory / "primary", appendonly=appendonly, port=primary_port,
                extra_args=data_args,
            ),
            LocalRedis(
                self.directory / "replica", appendonly=appendonly, port=replica_port,
                extra_args=[*data_args, "--replicaof", "127.0.0.1", str(primary_port)],
            ),
        ]  # fmt: skip
        self.sentinels = [
            LocalRedis(
                self.directory / f"sentinel-{index}", port=port,
                config_file=self.directory / f"sentinel-{index}" / "sentinel.conf",
                extra_args=["--sentinel"],
            )
            for index, port in enumerate(sentinel_ports)
        ]  # fmt: skip

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The sentinels' ``(host, port)`` pairs, as :class:`redis.sentinel.Sentinel` takes."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    @property
    def url(self) -> str:
        """A ``redis+sentinel://`` URL naming every sentinel, the service and database 0."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    def primary(self) -> LocalRedis:
        """The server the sentinels report as primary now (the first sentinel that answers).

        Raises:
            LookupError: no sentinel answered, or it named a server this object did not start.
        """
        port = self._reported_port()
        for server in self.servers:
            if server.port == port:
                return server
        raise LookupError(f"the sentinels report primary port {port}, not one of ours")

    def kill_primary(self) -> LocalRedis:
        """Kill (SIGKILL) the current primary, as a crash would.

        Returns:
            The killed server (its ``port`` is what :meth:`wait_for_failover` takes).
        """
        server = self.primary()
        server.kill()
        return server

    def wait_for_failover(self, old_port: int, timeout_s: float = 20.0) -> float:
        """Wait until every live sentinel reports a new primary that answers as a master.

        Args:
            old_port: the port of the primary that was lost.
            timeout_s: how long to wait.

        Returns:
            The seconds this call waited.

        Raises:
            TimeoutError: no new primary within ``timeout_s``.
        """

        def promoted() -> bool:
            reported = {self._reported_port(sentinel) for sentinel in self.sentinels}
            if len(reported) != 1 or old_port in reported or None in reported:
                return False
            return self.primary().role == "master"

        started = time.monotonic()
        what = f"the sentinels to promote a replica of port {old_port}"
        return wait_until(promoted, timeout_s, what=what) - started

    def start(self, timeout_s: float = 30.0) -> LocalSentinel:
        """Start the servers and the sentinels; wait until replication and discovery are done.

        Done: the replica has its first sync, and every sentinel knows the replica and the
        other sentinels (they find each other through the primary, every two seconds). On any
        failure what was started is stopped (the folders kept, for the logs) before the error
        propagates.

        Raises:
            RuntimeError: a server exited.
            TimeoutError: not done within ``timeout_s``.
        """
        try:
            for server in self.servers:
                server.start()
            for sentinel in self.sentinels:
                self._write_config(sentinel)
                sentinel.start()
            wait_until(self._settled, timeout_s, what="replication and sentinel discovery")
        except BaseException:
            self.stop(keep_directory=True)  # its logs say why
            raise
        return self

    def stop(self, *, keep_directory: bool = False) -> None:
        """Stop the sentinels first (no failover on the way down), then the servers.

        Args:
            keep_directory: keep even a temporary directory (to read the logs).
        """
        for server in [*self.sentinels, *self.servers]:
            server.stop()
        if self._owns_directory and not keep_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_config(self, sentinel: LocalRedis) -> None:
        # A sentinel rewrites its file as it learns the topology, so each gets its own.
        primary, name = self.servers[0], self.service_name
        assert sentinel.config_file is not None
        sentinel.config_file.parent.mkdir(parents=True, exist_ok=True)
        sentinel.config_file.write_text(
            f"sentinel monitor {name} 127.0.0.1 {primary.port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )

    def _settled(self) -> bool:
        try:
            if not self.servers[1].replica_synced():
                return False
            for sentinel in self.sentinels:
                with sentinel.client(socket_timeout=2) as client:
                    replicas = client.sentinel_slaves(self.service_name)
                    others = client.sentinel_sentinels(self.service_name)
                if len(replicas) != 1 or len(others) != self.sentinel_count - 1:
                    return False
        except redis.RedisError:
            return False
        return True

    def _reported_port(self, sentinel: LocalRedis | None = None) -> int | None:
        """The primary's port per ``sentinel`` (or the first that answers); None if none does."""
        for candidate in [sentinel] if sentinel else self.sentinels:
            if not candidate.running:
                continue
            try:
                with candidate.client(socket_timeout=2) as client:
                    _host, port = client.sentinel_get_master_addr_by_name(self.service_name)
                return int(port)
            except (redis.RedisError, TypeError):
                continue
        return None
