"""The pipeline's processes as the Procfile runs them, started and stopped from the outside.

A harness (the chaos experiments, the benchmarks) drives the pipeline as an operator would:
each role is the Procfile's command (``ckpt-pipeline pump``, ``rq worker scoring ...``,
``rq worker sink ...``), run in a process group of its own with its output in a log file.
Killing one takes the process and whatever it forked, RQ work-horse included.

Descendants and resident memory are read from ``/proc``: the harness runs on Linux.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The source checkout: the Procfile is not part of the installed package, and the processes
# run from the checkout so that ``tests`` and ``benchmarks`` modules import in them too.
REPO = Path(__file__).resolve().parents[2]
PROCFILE = REPO / "Procfile"
ROLES = ("pump", "scoring", "sink")
WORKER_CLASS_FLAG = "--worker-class"
CONNECTION_CLASS_FLAG = "--connection-class"
# Settings the harness decides for the processes unless asked to pass the shell's through.
_ISOLATED_PREFIXES = ("CKPT_", "PG")


def procfile_commands(redis_url: str, procfile: Path = PROCFILE) -> dict[str, list[str]]:
    """The commands of the Procfile by role, ``$REDIS_URL`` substituted and the console
    scripts resolved in this interpreter's environment.

    ``ckpt-pipeline`` becomes ``python -m ckpt_pipeline.cli`` of this interpreter, and a script
    beside the interpreter (``rq``) is used by its path, so a harness run from a virtualenv
    that is not activated starts that virtualenv's programs.
    """
    commands = {}
    for line in procfile.read_text().splitlines():
        role, sep, command = line.partition(":")
        if not sep or not command.strip():
            continue
        args = shlex.split(command.replace("$REDIS_URL", redis_url))
        beside = Path(sys.executable).with_name(args[0])
        if args[0] == "ckpt-pipeline":
            args = [sys.executable, "-m", "ckpt_pipeline.cli", *args[1:]]
        elif beside.exists():
            args[0] = str(beside)
        commands[role.strip()] = args
    return commands


def role_command(
    role: str,
    redis_url: str,
    *,
    worker_class: str | None = None,
    connection_class: str | None = None,
) -> list[str]:
    """The Procfile command of a role (``pump``, ``scoring``, ``sink``).

    Args:
        role: the Procfile's name of the process.
        redis_url: substituted for ``$REDIS_URL``.
        worker_class: an rq ``--worker-class`` instead of the Procfile's (a worker's only).
        connection_class: an rq ``--connection-class`` instead of the Procfile's; ``""``
            drops the option (rq's own ``redis.Redis``).
    """
    args = procfile_commands(redis_url)[role]
    if role == "pump":
        return args
    args = _with_option(args, WORKER_CLASS_FLAG, worker_class)
    return _with_option(args, CONNECTION_CLASS_FLAG, connection_class)


def option_value(args: list[str], flag: str) -> str | None:
    """The value that follows ``flag`` in a command, None when the command has no such flag."""
    if flag in args[:-1]:
        return args[args.index(flag) + 1]
    return None


def _with_option(args: list[str], flag: str, value: str | None) -> list[str]:
    if value is None:  # the Procfile's, as it is
        return args
    args = list(args)
    if flag in args[:-1]:
        at = args.index(flag)
        del args[at : at + 2]
    return [*args, flag, value] if value else args


def setting_name(name: str) -> str:
    """The environment variable of a setting: ``flush_lock_ttl_s`` is
    ``CKPT_FLUSH_LOCK_TTL_S``; a name that already starts with ``CKPT_`` is kept."""
    return name if name.startswith("CKPT_") else f"CKPT_{name.upper()}"


def pipeline_env(
    redis_url: str,
    sink_url: str,
    *,
    settings: Mapping[str, Any] | None = None,
    python_paths: Iterable[str | Path] = (),
    inherit_settings: bool = False,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of the pipeline's processes: REDIS_URL, CKPT_SINK and ``CKPT_<FIELD>``.

    Args:
        redis_url: ``REDIS_URL``, and ``RQ_REDIS_URL``: rq worker's ``--url``, which the
            Procfile leaves out so that no password shows in ``ps``.
        sink_url: ``CKPT_SINK``.
        settings: pipeline settings by field name or variable name (:func:`setting_name`).
        python_paths: folders put before the checkout on ``PYTHONPATH`` (a ``sitecustomize``
            of probes, say).
        inherit_settings: keep this process's ``CKPT_*``, ``PG*`` and ``PYTHONPATH`` (the
            benchmarks: an operator tunes a run from the shell). By default they are dropped,
            so a test runs the defaults whatever the shell exports.
        extra: more variables, set last.
    """
    if inherit_settings:
        env = dict(os.environ)
        paths = [*map(str, python_paths), str(REPO), os.environ.get("PYTHONPATH", "")]
    else:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_ISOLATED_PREFIXES)}
        paths = [*map(str, python_paths), str(REPO)]
    env.update(
        REDIS_URL=redis_url,
        RQ_REDIS_URL=redis_url,
        CKPT_SINK=sink_url,
        PYTHONPATH=os.pathsep.join(path for path in paths if path),
        PYTHONUNBUFFERED="1",  # a killed process's last lines are in its log
    )
    for name, value in (settings or {}).items():
        env[setting_name(name)] = str(value)
    env.update(extra or {})
    return env


@dataclass
class Proc:
    """One started process, in a process group of its own, its output appended to a log.

    Attributes:
        role: the Procfile's role (``pump``, ``scoring``, ``sink``), or what the process is.
        index: which of the role's processes it is.
        args: the command.
        env: its environment (a restart uses the current one: a redeploy changes it).
        log_dir: where ``<name>.log`` goes.
        label: the name when not ``<role>-<index>``.
        starts: how often it was started.
        kills: how often :meth:`kill` killed it.
    """

    role: str
    index: int
    args: list[str]
    env: dict[str, str]
    log_dir: Path
    label: str | None = None
    popen: subprocess.Popen | None = None
    starts: int = 0
    kills: int = 0

    @property
    def name(self) -> str:
        """``<role>-<index>``, or the label: names the log file."""
        return self.label or f"{self.role}-{self.index}"

    @property
    def log_path(self) -> Path:
        """The log file: every start appends to it."""
        return self.log_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The process id of the current start (None before the first)."""
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        """True while the current start runs."""
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        """The exit status once it ended (negative: the signal that killed it)."""
        return self.popen.poll() if self.popen is not None else None

    def poll(self) -> int | None:
        """The exit status, or None while it runs (or before it started)."""
        return self.returncode

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for it to end; return its exit status.

        Raises:
            subprocess.TimeoutExpired: still running after ``timeout_s``.
        """
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.wait(timeout_s)

    def start(self) -> Proc:
        """Start (or restart) the process; return it."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own descriptor
            log.write(f"--- start {self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.args,
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: what it forks dies with it
            )
        self.starts += 1
        return self

    def kill(self) -> None:
        """SIGKILL the process and its work-horse, as a crash, an OOM kill or a lost machine
        would; counted in :attr:`kills`."""
        if self.popen is None:
            return
        kill_tree(self.popen)
        self.popen.wait()
        self.kills += 1

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM the process group (a clean shutdown: RQ lets the running task finish),
        then SIGKILL whatever is left after ``timeout_s``."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout_s)
        kill_tree(self.popen)
        self.popen.wait()

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the log, to say why a process exited."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""


def kill_tree(popen: subprocess.Popen) -> None:
    """SIGKILL a started process, its process group and every descendant.

    RQ puts each work-horse in a session of its own, out of reach of the group: the group is
    frozen first (no new fork while the tree is read), the horse found among the process's
    descendants, and every one killed.
    """
    pid = popen.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGSTOP)
    # Only while the process is not reaped is its pid certain to be ours: a reaped pid may
    # already name someone else's process, whose children must not be touched.
    victims = [pid, *descendants(pid)] if popen.poll() is None else []
    for victim in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), whatever its session."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (in parentheses) may hold spaces: fields count from its end.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_tree_rss(pid: int) -> int:
    """Resident memory in bytes of a process and its descendants; 0 when it is gone."""
    total = _rss(pid)
    if total is None:
        return 0
    return total + sum(_rss(child) or 0 for child in descendants(pid))


def _rss(pid: int) -> int | None:
    try:  # statm's second field: resident pages (what psutil's memory_info().rss reads)
        resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return resident * os.sysconf("SC_PAGE_SIZE")
