"""A private PostgreSQL server on a random port in a temporary folder (tests, local runs).

``initdb`` and ``pg_ctl`` of the installed PostgreSQL are used as they are. PostgreSQL
refuses to run as root, so when this process is root the server's folder is handed to the
``postgres`` system user and every server binary runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ckpt_pipeline.testing.local_redis import free_port

INSTALL_HINT = (
    "install the PostgreSQL server with `apt-get install postgresql` (Debian/Ubuntu) or "
    "`brew install postgresql` (macOS), or put its bin folder (initdb, pg_ctl) on the PATH"
)
# Where distributions keep the server binaries off the PATH (Debian/Ubuntu, Homebrew, EDB).
SEARCH_DIRS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql*/bin",
    "/usr/local/opt/postgresql*/bin",
    "/usr/local/pgsql/bin",
)
UNPRIVILEGED_USER = "postgres"
SUPERUSER = "ckpt"
# Settings that trade safety against power loss for speed. Commits still reach the
# operating system before they return (synchronous_commit stays on), so a killed server
# (``kill``) recovers every committed transaction.
FAST_SETTINGS = {"fsync": "off", "full_page_writes": "off"}
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def find_binary(name: str, search_dirs: tuple[str, ...] = SEARCH_DIRS) -> str:
    """Return the path of a PostgreSQL server binary (``initdb``, ``pg_ctl``).

    The PATH comes first, then the usual install folders, newest version first.

    Raises:
        FileNotFoundError: with how to install PostgreSQL, when it is nowhere.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = [p for pattern in search_dirs for p in glob.glob(os.path.join(pattern, name))]
    candidates = [p for p in candidates if os.access(p, os.X_OK)]
    if candidates:
        return max(candidates, key=_version_key)
    raise FileNotFoundError(f"PostgreSQL server binary {name!r} not found; {INSTALL_HINT}")


class LocalPostgres:
    """Start and stop a private PostgreSQL server, listening on 127.0.0.1 only.

    Args:
        directory: working folder holding ``data/`` and ``server.log`` (a new temporary
            one by default, removed by ``stop``). As root, every folder above it must be
            searchable by the ``postgres`` user.
        port: a fixed port (a restart keeps the URL); random by default.
        durable: keep fsync and full-page writes on, so that committed data survives a
            power loss, not only a killed server. Off by default: tests want speed.
        search_dirs: where to look for the binaries when they are not on the PATH.
        listen_on: more addresses to listen on besides 127.0.0.1 (a veth's, for a network
            experiment); clients on their subnets log in with the password.

    Raises:
        FileNotFoundError: ``initdb`` or ``pg_ctl`` is not installed.
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        port: int | None = None,
        durable: bool = False,
        search_dirs: tuple[str, ...] = SEARCH_DIRS,
        listen_on: Sequence[str] = (),
    ) -> None:
        self.initdb = find_binary("initdb", search_dirs)
        self.pg_ctl = find_binary("pg_ctl", search_dirs)
        self._owns_directory = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="ckpt-pg-"))
        self.port = port or free_port()
        self.durable = durable
        self.listen_on = tuple(listen_on)
        self.password = secrets.token_hex(16)
        self._run_as = _unprivileged_user() if os.geteuid() == 0 else None

    @property
    def data_dir(self) -> Path:
        """The cluster's data folder."""
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        """The server's log."""
        return self.directory / "server.log"

    @property
    def url(self) -> str:
        """The superuser's URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, database: str, host: str = "127.0.0.1") -> str:
        """Return the superuser's URL of ``database`` on this server at ``host`` (127.0.0.1
        or one of ``listen_on``)."""
        return f"postgresql://{SUPERUSER}:{self.password}@{host}:{self.port}/{database}"

    @property
    def running(self) -> bool:
        """True while the postmaster of this folder is alive."""
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by another user
            return True
        return True

    def start(self, timeout_s: float = 30.0) -> LocalPostgres:
        """Create the cluster on first use, start the server and wait until it accepts.

        Raises:
            RuntimeError: initdb or the server failed (the message points at the log).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._hand_over(self.directory)
        if not (self.data_dir / "PG_VERSION").exists():
            self._init_cluster()
        if self.listen_on:
            self._allow_subnets()
        options = " ".join(f"-c {name}={value}" for name, value in self._settings().items())
        self._run(
            [self.pg_ctl, "start", "-D", str(self.data_dir), "-l", str(self.log_file),
             "-w", "-t", str(max(1, round(timeout_s))), "-o", options],
            "pg_ctl start",
        )  # fmt: skip
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server (fast shutdown: clients are disconnected); the data stays."""
        if self.running:
            self._run(
                [self.pg_ctl, "stop", "-D", str(self.data_dir), "-m", "fast", "-w",
                 "-t", str(max(1, round(timeout_s)))],
                "pg_ctl stop",
            )  # fmt: skip

    def kill(self) -> None:
        """Kill the server and its backends at once (SIGKILL), as a crash would.

        ``start`` afterwards recovers the cluster from its WAL.
        """
        pid = self._postmaster_pid()
        if pid is None:
            return
        # pg_ctl makes the postmaster a session leader, so its process group holds the
        # postmaster and every backend: all of them die together, as in a power cut.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.running and time.monotonic() < deadline:
            time.sleep(0.02)

    def remove(self) -> None:
        """Stop the server and delete the folder, if this object created it."""
        self.stop()
        if self._owns_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL.

        Args:
            name: lower-case letters, digits and underscores.

        Raises:
            ValueError: the name is not a plain identifier.
        """
        import psycopg
        from psycopg import sql

        if not _DATABASE_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*, at most 63")
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            # FILE_COPY copies the tiny template directly instead of WAL-logging each
            # block: several times faster for a test database.
            conn.execute(
                sql.SQL("CREATE DATABASE {} STRATEGY = FILE_COPY").format(sql.Identifier(name))
            )
        return self.url_for(name)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def _settings(self) -> dict[str, str]:
        settings = {
            "port": str(self.port),
            "listen_addresses": ",".join(("127.0.0.1", *self.listen_on)),
            # No Unix socket: its default folder belongs to the system server, and the
            # URL names TCP anyway.
            "unix_socket_directories": "''",
            "max_connections": "50",
        }
        return settings if self.durable else {**settings, **FAST_SETTINGS}

    def _init_cluster(self) -> None:
        password_file = self.directory / "superuser.pw"
        password_file.write_text(self.password)
        self._hand_over(password_file)
        args = [
            self.initdb, "-D", str(self.data_dir), "-U", SUPERUSER, "--pwfile",
            str(password_file), "-E", "UTF8", "--locale=C", "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ]  # fmt: skip
        if not self.durable:
            args.append("--no-sync")
        try:
            self._run(args, "initdb")
        finally:
            password_file.unlink(missing_ok=True)

    def _allow_subnets(self) -> None:
        # initdb's pg_hba.conf admits 127.0.0.1 only; "samenet" adds the subnets of the
        # server's own addresses (a veth's peer), still with the password.
        hba = self.data_dir / "pg_hba.conf"
        line = "host all all samenet scram-sha-256\n"
        if line not in hba.read_text():
            with open(hba, "a") as handle:
                handle.write(line)

    def _run(self, args: list[str], what: str) -> None:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            uid, gid = self._run_as
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        # The working folder must be readable by the server's user (root's home is not).
        done = subprocess.run(
            args,
            cwd=self.directory,
            env=_clean_env(),
            capture_output=True,
            text=True,
            check=False,
            **kwargs,
        )
        if done.returncode != 0:
            detail = (done.stderr or done.stdout).strip()[-2000:]
            raise RuntimeError(f"{what} failed ({done.returncode}): {detail}; see {self.log_file}")

    def _hand_over(self, path: Path) -> None:
        """Give ``path`` to the unprivileged user when we are root; check it can reach it."""
        if self._run_as is None:
            return
        uid, gid = self._run_as
        os.chown(path, uid, gid)
        for parent in path.resolve().parents:
            if not _searchable_by(parent, uid, gid):
                raise PermissionError(
                    f"{parent} is not searchable by the {UNPRIVILEGED_USER!r} user, which runs "
                    "the server as root cannot; use a folder under the system temp folder"
                )

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        return int(first_line) if first_line.strip().isdigit() else None


def _unprivileged_user() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        raise RuntimeError(
            "PostgreSQL cannot run as root and there is no 'postgres' user to run it as; "
            "create one (`useradd --system postgres`) or run as a normal user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _searchable_by(path: Path, uid: int, gid: int) -> bool:
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & 0o100)
    if info.st_gid == gid:
        return bool(info.st_mode & 0o010)
    return bool(info.st_mode & 0o001)


def _clean_env() -> dict[str, str]:
    # PG* variables of the caller (PGPORT, PGDATA, PGHOST...) would override our settings.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)
