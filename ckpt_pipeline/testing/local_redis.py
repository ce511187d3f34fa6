"""A private ``redis-server`` on a random port in a temporary folder (demo, tests, benchmarks).

:class:`LocalRedis` is also the building block of the multi-node fixtures
(:mod:`ckpt_pipeline.testing.local_cluster`, :mod:`ckpt_pipeline.testing.local_sentinel`).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

INSTALL_HINT = (
    "install it with `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`"
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct TCP ports on 127.0.0.1 that are free right now.

    Args:
        count: how many ports.

    Returns:
        The ports, all different (each socket stays bound until all are chosen).
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
        return ports


class LocalRedis:
    """Start and stop a private ``redis-server``.

    Args:
        directory: working folder (a new temporary one by default).
        appendonly: turn on AOF persistence (``appendfsync everysec``).
        port: a fixed port to reuse (a restart keeps the URL); random by default.
        extra_args: more ``redis-server`` arguments, e.g. ``["--aclfile", path]``.
        config_file: a configuration file to load first (the command line overrides it); a
            sentinel needs one it can rewrite, with ``extra_args=["--sentinel"]``.
        username: the user that :meth:`client` (and the readiness PING) logs in as.
        password: that user's password.
        bind: the addresses it listens on (a network experiment adds a veth's address).

    Raises:
        FileNotFoundError: when no ``redis-server`` binary is on the PATH.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        appendonly: bool = False,
        port: int | None = None,
        extra_args: list[str] | None = None,
        config_file: str | Path | None = None,
        username: str | None = None,
        password: str | None = None,
        bind: Sequence[str] = ("127.0.0.1",),
    ) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError(f"redis-server not found; {INSTALL_HINT}")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ckpt-redis-"))
        self.appendonly = appendonly
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.config_file = Path(config_file) if config_file else None
        self.username = username
        self.password = password
        self.bind = tuple(bind)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's URL (database 0)."""
        return self.url_on("127.0.0.1")

    def url_on(self, host: str) -> str:
        """The server's URL (database 0) at ``host``, one of its ``bind`` addresses."""
        return f"redis://{host}:{self.port}/0"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.directory / "redis.log"

    @property
    def running(self) -> bool:
        """Whether the process this object started is still alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def role(self) -> str | None:
        """``"master"`` or ``"slave"`` as the server reports it now; ``None`` when it is down."""
        if not self.running:
            return None
        try:
            with self.client(socket_timeout=2) as client:
                return client.execute_command("ROLE")[0].decode()
        except redis.RedisError:
            return None

    def replica_synced(self) -> bool:
        """Whether this is a replica whose link to its master is up, with the first sync done."""
        try:
            with self.client(decode_responses=True, socket_timeout=2) as client:
                info = client.info("replication")
        except redis.RedisError:
            return False
        return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

    def client(self, **kwargs: Any) -> redis.Redis:
        """A client of this server, logged in as ``username``.

        Args:
            **kwargs: more :class:`redis.Redis` arguments (they override the defaults).

        Returns:
            A new client; close it (or use it as a context manager) when done.
        """
        options: dict[str, Any] = {
            "host": "127.0.0.1", "port": self.port, "socket_connect_timeout": 0.5,
            "username": self.username, "password": self.password,
        }  # fmt: skip
        return redis.Redis(**{**options, **kwargs})

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: the server exited.
            TimeoutError: it did not answer within ``timeout_s``.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, *([str(self.config_file)] if self.config_file else []),
            "--port", str(self.port), "--bind", *self.bind, "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.log_file), *self.extra_args,
        ]  # fmt: skip
        if self.bind != ("127.0.0.1",):
            # Protected mode refuses every address but loopback to a server without a
            # password; the extra addresses are a test's own veth links.
            args += ["--protected-mode", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        with self.client() as client:
            while time.monotonic() < deadline:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        self.process = None
                        raise RuntimeError(f"redis-server exited; see {self.log_file}") from None
                    time.sleep(0.05)
        self.kill()
        raise TimeoutError(f"redis-server did not answer on port {self.port}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
