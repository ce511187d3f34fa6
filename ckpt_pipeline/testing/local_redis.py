"""A private ``redis-server`` on a random port in a temporary folder (demo, tests, benchmarks)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

INSTALL_HINT = (
    "install it with `apt-get install redis-server` (Debian/Ubuntu) or `brew install redis`"
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalRedis:
    """Start and stop a private ``redis-server``.

    Args:
        directory: working folder (a new temporary one by default).
        appendonly: turn on AOF persistence (``appendfsync everysec``).
        port: a fixed port to reuse (a restart keeps the URL); random by default.
        extra_args: more ``redis-server`` arguments, e.g. ``["--aclfile", path]``.

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
    ) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError(f"redis-server not found; {INSTALL_HINT}")
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ckpt-redis-"))
        self.appendonly = appendonly
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The server's URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        """Start the server and wait until it answers PING."""
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no",
            "--logfile", str(self.directory / "redis.log"), *self.extra_args,
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    log_file = self.directory / "redis.log"
                    raise RuntimeError(f"redis-server exited; see {log_file}") from None
                time.sleep(0.05)
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
