"""A process behind a real virtual network link whose packets can be delayed, dropped and
blackholed, for the chaos experiments (``tests/chaos``).

One :class:`Link` is two network namespaces and two veth pairs on one /29 subnet::

    root namespace            router namespace (<namespace>r)        the namespace
    servers on host_ip  <-veth->  to-host | FORWARD | to-app  <-veth->  eth0: ns_ip
                                  (the faults)                          link.wrap(argv)

The faults act on the packets the router forwards: netem or an iptables NFQUEUE rule with
:mod:`ckpt_pipeline.testing.packet_delay`, and iptables ``DROP``. docs/decisions.md (#16)
has the reasons (a packet held in the sender's own OUTPUT chain would still belong to its
TCP socket, which TCP small queues throttle to a few packets per delay).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import ipaddress
import itertools
import json
import os
import random
import re
import select
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

_SUBNETS = ipaddress.ip_network("10.213.0.0/16")  # carved into one /29 per link
_QUEUE = 0  # NFQUEUE numbers are per namespace, and each link has its own router
_LOCK = Path(tempfile.gettempdir()) / "ckpt-netfault.lock"
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # so the delay program imports
_READY_TIMEOUT_S = 15.0
_netem_missing = False  # the kernel's answer does not change: ask it once per process


class NetfaultError(RuntimeError):
    """A command that builds, breaks or heals a link failed; the message has its stderr."""


def unavailable_reason() -> str | None:
    """Tell why links cannot be made on this machine.

    Returns:
        None when they can (Linux, root, ``ip``, ``iptables``, the NetfilterQueue package),
        else a sentence naming what is missing, fit for ``pytest.skip``.
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, iptables)"
    for tool, package in (("ip", "iproute2"), ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"needs `{tool}` (apt-get install {package})"
    try:
        importlib.import_module("netfilterqueue")
    except ImportError as exc:
        return f"needs NetfilterQueue (pip install NetfilterQueue; libnetfilter-queue-dev): {exc}"
    return None


def _run(argv: list[str], *, input: str | None = None, check: bool = True) -> str:
    """Run a command and return its stdout, raising NetfaultError with its stderr."""
    try:
        done = subprocess.run(
            argv, input=input, check=check, capture_output=True, text=True, timeout=30
        )
    except subprocess.CalledProcessError as exc:
        detail = (exc.stderr or exc.stdout or "").strip()
        raise NetfaultError(f"`{shlex.join(argv)}` failed ({exc.returncode}): {detail}") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetfaultError(f"`{shlex.join(argv)}`: {exc}") from exc
    return done.stdout


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of the delay program's stdout, or "" when it said nothing in time."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else ""


class Link:
    """A veth link between the root namespace and a fresh network namespace, through a
    router namespace where the packets are delayed, dropped or blackholed.

    Servers stay in the root namespace and listen on ``host_ip``; a process started with
    ``link.wrap(argv)`` runs inside ``namespace`` (at ``ns_ip``) and reaches them only
    through the link. ``host_ip`` and ``ns_ip`` are set by :meth:`open`; ``host_if`` is the
    link's interface in the root namespace, ``backend`` what :meth:`degrade` used.

    Args:
        name: the prefix of the namespaces' names (``<name>-<pid>-<n>``): lowercase letters,
            digits and dashes.

    Raises:
        ValueError: for another name.
    """

    _numbers = itertools.count()

    def __init__(self, name: str = "ckpt") -> None:
        if not re.fullmatch(r"[a-z][a-z0-9-]{0,19}", name):
            raise ValueError(f"link name {name!r}: lowercase letters, digits, '-'; <= 20")
        pid, number = os.getpid(), next(Link._numbers) % 1000
        self.name = name
        self.namespace = f"{name}-{pid}-{number}"
        self._router = f"{self.namespace}r"
        self.host_if = f"{name[:3]}-{pid}-{number}"  # <= 15 characters (IFNAMSIZ)
        self.host_ip = self.ns_ip = self.backend = ""
        self._fault: str | None = None  # "netem", "nfqueue" or "blackhole"
        self._delay: subprocess.Popen[str] | None = None
        self._delay_log: IO[bytes] | None = None
        self._totals = {"delayed": 0, "dropped": 0, "blackholed": 0}
        self._is_open = False

    def __enter__(self) -> Link:
        return self.open()

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def open(self) -> Link:
        """Create the namespaces, veth pairs and addresses; remove leftovers of dead runs.

        Returns:
            The link, open (``host_ip`` and ``ns_ip`` set).

        Raises:
            NetfaultError: when a command fails (what was made is removed again).
        """
        if self._is_open:
            return self
        with open(_LOCK, "a") as lock:  # one open() at a time: stale cleanup, free subnet
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._remove_stale()
            block = self._free_block()
            host, to_host, to_app, app = (str(block.network_address + i) for i in (1, 2, 5, 6))
            self._is_open = True  # from here on, close() has something to remove
            try:
                self._build(host, to_host, to_app, app)
            except BaseException:
                self.close()
                raise
            self.host_ip, self.ns_ip = host, app
        return self

    def _build(self, host: str, to_host: str, to_app: str, app: str) -> None:
        router, ns, host_if = self._router, self.namespace, self.host_if
        # Both pairs are made with their ends already in place: no veth is ever left in the
        # root namespace without its namespace, which stale cleanup relies on.
        batches = {
            (): [
                f"netns add {ns}",
                f"netns add {router}",
                f"link add {host_if} type veth peer name to-host netns {router}",
                f"link add to-app netns {router} type veth peer name eth0 netns {ns}",
                f"addr add {host}/29 dev {host_if}",
                f"link set {host_if} up",
            ],
            ("-n", router): [
                f"addr add {to_host}/30 dev to-host",
                f"addr add {to_app}/30 dev to-app",
                *(f"link set {dev} up" for dev in ("to-host", "to-app", "lo")),
            ],
            ("-n", ns): [f"addr add {app}/29 dev eth0", "link set eth0 up", "link set lo up"],
        }
        for options, commands in batches.items():
            _run(["ip", *options, "-b", "-"], input="\n".join(commands) + "\n")
        # The router forwards, and answers ARP for the far side at once (the default
        # proxy_delay holds a proxied answer up to 0.8 s), so both ends see one plain /29:
        # PostgreSQL's `samenet` admits the namespace.
        script = "echo 1 > /proc/sys/net/ipv4/ip_forward"
        for dev in ("to-host", "to-app"):
            script += f"; echo 1 > /proc/sys/net/ipv4/conf/{dev}/proxy_arp"
            script += f"; echo 0 > /proc/sys/net/ipv4/neigh/{dev}/proxy_delay"
        self._in_router(["sh", "-ec", script])

    def close(self) -> None:
        """Stop the delay program, delete the veth pairs and both namespaces (idempotent).

        Processes still running in the namespace are not killed; they lose the link.
        """
        if not self._is_open:
            return
        try:
            self._stop_delay()
        finally:
            # Deleting the root end destroys its pair; the namespaces take the other pair.
            _run(["ip", "link", "del", self.host_if], check=False)
            for namespace in (self.namespace, self._router):
                _run(["ip", "netns", "del", namespace], check=False)
            self._is_open, self._fault = False, None

    def wrap(self, argv: list[str]) -> list[str]:
        """Return ``["ip", "netns", "exec", namespace, *argv]``: ``argv`` run inside the
        namespace (empty: the prefix alone, to put before another command)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def degrade(self, delay_ms: float, loss_pct: float) -> None:
        """Delay the packets leaving the namespace and drop a random share of them, like
        ``tc qdisc add ... netem delay D loss P`` on its veth; replaces any other fault.

        The NFQUEUE rule is added once the delay program said ``ready`` (no packet is queued
        without a listener) and without ``--queue-bypass``: should the program die, the link
        drops everything, which :meth:`stats` reports, instead of silently healing.

        Args:
            delay_ms: the added one-way delay, in milliseconds.
            loss_pct: the share of packets dropped, in percent (0..100).

        Raises:
            ValueError: for a negative delay or a share outside 0..100.
            NetfaultError: when the link is not open or a command fails.
        """
        global _netem_missing
        if delay_ms < 0 or not 0 <= loss_pct <= 100:
            raise ValueError(f"degrade({delay_ms}, {loss_pct}): delay >= 0, 0 <= loss <= 100")
        self.heal()
        if not _netem_missing:
            netem = f"root netem limit 100000 delay {delay_ms}ms loss {loss_pct}%"
            try:
                self._in_router(["tc", "qdisc", "add", "dev", "to-host", *netem.split()])
                self._fault = self.backend = "netem"
                return
            except NetfaultError:
                _netem_missing = True  # "Specified qdisc kind is unknown"
        self._start_delay(delay_ms, loss_pct)
        try:
            self._iptables("-A", "FORWARD", "-i", "to-app", "-j", "NFQUEUE", "--queue-num", "0")
        except BaseException:
            self._stop_delay()
            raise
        self._fault = self.backend = "nfqueue"

    def blackhole(self, port: int | None = None) -> None:
        """Drop every packet between the namespace and the root namespace, both ways
        (dropped, not rejected: a connect times out); replaces any other fault.

        Args:
            port: only the TCP packets to and from this server port (the rest pass).
        Raises:
            NetfaultError: when the link is not open or a command fails.
        """
        self.heal()
        matches = [["-p", "tcp", way, str(port)] for way in ("--dport", "--sport")]
        for match in matches if port is not None else [[]]:
            self._iptables("-I", "FORWARD", *match, "-j", "DROP")
        self._fault = "blackhole"

    def heal(self) -> None:
        """Remove the fault, if any; established TCP connections survive (only starved).

        The queue rule goes first, then the delay program lets its held packets go at once
        (new ones pass straight on: a few may overtake those).

        Raises:
            NetfaultError: when the link is not open or a command fails.
        """
        if not self._is_open:
            raise NetfaultError(f"link {self.namespace} is not open")
        fault, self._fault = self._fault, None
        if fault == "blackhole":
            self._totals["blackholed"] += self._blackholed()
        if fault in ("blackhole", "nfqueue"):
            self._iptables("-F", "FORWARD")
        if fault == "nfqueue":
            self._stop_delay()
        if fault == "netem":
            self._add(self._totals, self._netem_counts())
            self._in_router(["tc", "qdisc", "del", "dev", "to-host", "root"])

    def stats(self) -> dict[str, int]:
        """Count what the faults did to packets, since the link was opened.

        Returns:
            ``delayed`` (let through after the delay), ``dropped`` (the random loss),
            ``blackholed`` (dropped by the blackhole) and ``held`` (delayed right now).

        Raises:
            NetfaultError: when the delay program is gone (the link then drops everything).
        """
        counts = dict(self._totals, held=0)
        if self._fault == "blackhole":
            counts["blackholed"] += self._blackholed()
        elif self._fault == "netem":
            self._add(counts, self._netem_counts())
        elif self._fault == "nfqueue" and self._delay is not None:
            reply = ""
            with contextlib.suppress(OSError):
                assert self._delay.stdin is not None
                self._delay.stdin.write("stats\n")
                self._delay.stdin.flush()
                reply = _read_line(self._delay, 5)
            if not reply:
                raise NetfaultError(f"the delay program is gone: {self._delay_stderr()}")
            self._add(counts, json.loads(reply), "held")
        return counts

    def _in_router(self, argv: list[str]) -> str:
        return _run(["ip", "netns", "exec", self._router, *argv])

    def _iptables(self, *args: str) -> str:
        return self._in_router(["iptables", "-w", *args])

    def _blackholed(self) -> int:
        # `iptables -nvxL`: two header lines, then "pkts bytes target prot ..." per rule.
        lines = self._iptables("-nvxL", "FORWARD").splitlines()[2:]
        return sum(int(f[0]) for f in (line.split() for line in lines) if f[2:3] == ["DROP"])

    def _netem_counts(self) -> dict[str, int]:
        qdiscs = json.loads(self._in_router(["tc", "-s", "-j", "qdisc", "show", "dev", "to-host"]))
        netem = next((q for q in qdiscs if q.get("kind") == "netem"), {})
        return {"delayed": netem.get("packets", 0), "dropped": netem.get("drops", 0)}

    @staticmethod
    def _add(counts: dict[str, int], more: dict[str, int], *extra: str) -> None:
        for key in ("delayed", "dropped", *extra):
            counts[key] += int(more.get(key, 0))

    def _start_delay(self, delay_ms: float, loss_pct: float) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
        self._delay_log = tempfile.TemporaryFile()  # noqa: SIM115 (its stderr; _stop_delay closes it)
        argv = ["ip", "netns", "exec", self._router, sys.executable]
        argv += ["-m", "ckpt_pipeline.testing.packet_delay", "--queue", str(_QUEUE)]
        argv += ["--delay-ms", str(delay_ms), "--loss-pct", str(loss_pct)]
        pipes: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE}
        # A session of its own: Ctrl-C on the test run must not lift the fault under it.
        self._delay = subprocess.Popen(
            argv, **pipes, stderr=self._delay_log, text=True, env=env, start_new_session=True
        )
        if _read_line(self._delay, _READY_TIMEOUT_S) != "ready":
            log = self._delay_stderr()
            self._stop_delay()
            raise NetfaultError(f"the delay program did not start: {log}")

    def _stop_delay(self) -> None:
        proc, log, self._delay, self._delay_log = self._delay, self._delay_log, None, None
        if proc is None:
            return
        final = ""
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            assert proc.stdin is not None and proc.stdout is not None and log is not None
            proc.stdin.close()  # EOF: it lets the held packets go, prints its counts, exits
            final = _read_line(proc, 5)
            proc.wait(5)
            proc.stdout.close()
            log.close()
        if proc.poll() is None:  # an interrupted stop still ends it: its stdin is closed
            proc.kill()
            proc.wait()
        with contextlib.suppress(ValueError):
            self._add(self._totals, json.loads(final) if final else {})

    def _delay_stderr(self) -> str:
        if self._delay_log is None:
            return ""
        self._delay_log.seek(0)
        return self._delay_log.read().decode(errors="replace").strip()[-2000:]

    def _free_block(self) -> ipaddress.IPv4Network:
        # Every address and route of the root namespace, other links' included.
        text = _run(["ip", "-4", "-o", "addr", "show"])
        text += _run(["ip", "-4", "route", "show", "table", "all"])
        words = re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?", text)
        used = {ipaddress.ip_network(word, strict=False) for word in words}
        # From a random place: a block just freed may still get packets of its old link's
        # connections (a FIN retransmitted from the root namespace), which the next link
        # there would answer with a RST, and count.
        blocks = list(_SUBNETS.subnets(new_prefix=29))
        start = random.randrange(len(blocks))
        for block in blocks[start:] + blocks[:start]:
            if not any(block.overlaps(net) for net in used):
                return block
        raise NetfaultError(f"no free /29 left in {_SUBNETS}")

    def _remove_stale(self) -> None:
        # Leftovers of a crashed run carry its pid: remove those whose pid is dead.
        def dead(pattern: str, name: str) -> bool:
            match = re.fullmatch(pattern, name)
            return match is not None and not Path(f"/proc/{match[1]}").exists()

        for entry in json.loads(_run(["ip", "-j", "netns", "list"]) or "[]"):
            if dead(rf"{re.escape(self.name)}-(\d+)-\d+r?", entry["name"]):
                _run(["ip", "netns", "del", entry["name"]], check=False)
        for entry in json.loads(_run(["ip", "-j", "link", "show", "type", "veth"]) or "[]"):
            if dead(rf"{re.escape(self.name[:3])}-(\d+)-\d+", entry["ifname"]):
                _run(["ip", "link", "del", entry["ifname"]], check=False)
