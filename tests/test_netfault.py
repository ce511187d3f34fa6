"""ckpt_pipeline.testing.netfault: a real link whose packets are delayed, dropped, blackholed.

Real namespaces, veth pairs and sockets. A client "in the namespace" is either a process
started with ``link.wrap`` or a socket this process creates from a thread that joined the
namespace (a socket stays in the namespace it was created in), so a test can hold both ends
of one TCP connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import pytest

from ckpt_pipeline.testing.netfault import Link, unavailable_reason

REASON = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=str(REASON))]

REPO = Path(__file__).resolve().parents[1]
NAME = "nftest"  # a prefix of its own: stale cleanup here never touches another test's links
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

# Round trips of one byte over a fresh connection, in milliseconds, printed as JSON.
RTT_CLIENT = """
import json, socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
rtts = []
for _ in range(int(sys.argv[3])):
    start = time.perf_counter()
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    rtts.append((time.perf_counter() - start) * 1000)
print(json.dumps(rtts))
"""
# A new connection: prints "connected" or the exception's class name.
CONNECT_CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""

# A test run that crashes with its link degraded: prints the namespace and the delay
# program's pid, then exits without close().
CRASHING_RUN = """
import os, sys
from ckpt_pipeline.testing.netfault import Link
link = Link(sys.argv[1]).open()
link.degrade(delay_ms=100, loss_pct=1)
print(link.namespace, link._delay.pid, flush=True)
os._exit(1)
"""


def in_namespace(link: Link, make: Callable[[], T]) -> T:
    """Call ``make`` in a short-lived thread that joined the link's network namespace."""

    def joined() -> T:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(f"/run/netns/{link.namespace}") as handle:
            if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        return make()

    with ThreadPoolExecutor(max_workers=1) as pool:  # the thread ends with the pool
        return pool.submit(joined).result()


def run_in(link: Link, code: str, *args: object) -> str:
    """Run a Python snippet inside the namespace and return its stdout."""
    argv = link.wrap([sys.executable, "-c", code, *map(str, args)])
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


@contextlib.contextmanager
def echo_server(host: str) -> Iterator[int]:
    """A TCP echo server on ``host`` in this (the root) namespace; yields its port."""
    listener = socket.create_server((host, 0))

    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def serve() -> None:
        with contextlib.suppress(OSError):  # the listener was closed
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone would not)
        listener.close()


def namespaces() -> set[str]:
    return {entry["name"] for entry in json.loads(ip("-j", "netns", "list") or "[]")}


def interfaces() -> set[str]:
    return {entry["ifname"] for entry in json.loads(ip("-j", "link", "show"))}


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def link() -> Iterator[Link]:
    with Link(NAME) as opened:
        yield opened


def test_degrade_adds_its_delay_to_every_round_trip(link: Link) -> None:
    with echo_server(link.host_ip) as port:
        healthy = json.loads(run_in(link, RTT_CLIENT, link.host_ip, port, 20))
        link.degrade(delay_ms=200, loss_pct=0)
        degraded = json.loads(run_in(link, RTT_CLIENT, link.host_ip, port, 10))
    print(f"rtt healthy median {statistics.median(healthy):.2f} ms, degraded {degraded}")
    assert link.backend in ("netem", "nfqueue")
    assert statistics.median(healthy) < 20
    assert min(degraded) >= 200 and statistics.median(degraded) < 600
    assert link.stats()["delayed"] >= 12  # the handshake's two packets, the 10 requests


def test_degrade_loses_its_share_and_tcp_still_delivers_every_byte(link: Link) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    receiver.bind((link.host_ip, 0))
    receiver.settimeout(1.0)
    sender = in_namespace(link, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    # One datagram first, so the burst below does not wait in the router for ARP (which
    # queues only a few hundred packets of a neighbour not yet resolved).
    sender.sendto(b"warm-up", receiver.getsockname())
    assert receiver.recv(64) == b"warm-up"
    link.degrade(delay_ms=200, loss_pct=5)
    before, sent, received = link.stats(), 1000, 0
    with receiver, sender:
        for number in range(sent):
            sender.sendto(b"%d" % number, receiver.getsockname())
        with contextlib.suppress(TimeoutError):  # one second of silence: all are in
            while receiver.recv(64):
                received += 1
    after = link.stats()
    dropped = after["dropped"] - before["dropped"]
    print(f"udp: {dropped} of {sent} dropped ({100 * dropped / sent:.1f} %), {received} received")
    assert 0.02 * sent <= dropped <= 0.12 * sent
    assert received == sent - dropped
    assert after["delayed"] - before["delayed"] == received

    data = os.urandom(300_000)
    with echo_server(link.host_ip) as port:
        client = in_namespace(link, lambda: socket.create_connection((link.host_ip, port), 10))
        with client:
            client.settimeout(30)
            writer = threading.Thread(target=client.sendall, args=(data,))
            start = time.monotonic()
            writer.start()
            echoed = bytearray()
            while len(echoed) < len(data) and (chunk := client.recv(65536)):
                echoed += chunk
            writer.join()
    print(f"tcp: {len(data)} bytes echoed in {time.monotonic() - start:.1f} s")
    assert bytes(echoed) == data
    assert link.stats()["dropped"] > after["dropped"]  # TCP met losses too, and recovered


def test_blackhole_starves_connections_and_heal_revives_them(link: Link) -> None:
    listener = socket.create_server((link.host_ip, 0))
    port = listener.getsockname()[1]
    client = in_namespace(link, lambda: socket.create_connection((link.host_ip, port), 5))
    server, _ = listener.accept()
    with listener, client, server:
        client.sendall(b"hello")
        assert server.recv(5) == b"hello"

        link.blackhole()
        client.sendall(b"up")
        server.sendall(b"down")
        client.settimeout(1.0)
        server.settimeout(1.0)
        with pytest.raises(TimeoutError):
            server.recv(2)
        with pytest.raises(TimeoutError):
            client.recv(4)
        # A new connection times out: its SYN is dropped, nothing answers "refused".
        assert run_in(link, CONNECT_CLIENT, link.host_ip, port, 1.5).strip() == "TimeoutError"
        assert link.stats()["blackholed"] >= 3

        link.heal()
        client.settimeout(15)  # TCP retransmits on its own backed-off timer
        server.settimeout(15)
        assert server.recv(2) == b"up"
        assert client.recv(4) == b"down"
        assert run_in(link, CONNECT_CLIENT, link.host_ip, port, 5).strip() == "connected"
    assert link.stats()["blackholed"] >= 3  # kept after the heal


def test_a_blackhole_of_one_port_lets_the_others_pass(link: Link) -> None:
    cut, spared = socket.create_server((link.host_ip, 0)), socket.create_server((link.host_ip, 0))
    with cut, spared:
        cut_port, spared_port = cut.getsockname()[1], spared.getsockname()[1]
        link.blackhole(port=cut_port)
        assert run_in(link, CONNECT_CLIENT, link.host_ip, cut_port, 1.5).strip() == "TimeoutError"
        assert run_in(link, CONNECT_CLIENT, link.host_ip, spared_port, 5).strip() == "connected"
        assert link.stats()["blackholed"] >= 1
        link.heal()
        assert run_in(link, CONNECT_CLIENT, link.host_ip, cut_port, 5).strip() == "connected"


def test_close_leaves_nothing_even_after_an_exception() -> None:
    with pytest.raises(KeyError), Link(NAME) as link:
        link.degrade(delay_ms=50, loss_pct=1)
        delay_program = link._delay
        assert {link.namespace, f"{link.namespace}r"} <= namespaces()
        assert link.host_if in interfaces()
        raise KeyError("boom")
    assert not {link.namespace, f"{link.namespace}r"} & namespaces()
    assert link.host_if not in interfaces()
    assert delay_program is not None and delay_program.poll() is not None
    link.close()  # again: nothing to do


def test_open_removes_what_a_dead_run_left_and_only_that() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "60"])
    stale, kept = f"{NAME}-{dead.pid}-7", f"{NAME}-{alive.pid}-7"
    stale_if = f"{NAME[:3]}-{dead.pid}-7"
    try:
        for namespace in (stale, f"{stale}r", kept):
            ip("netns", "add", namespace)
        ip("link", "add", stale_if, "type", "veth", "peer", "name", "x", "netns", f"{stale}r")
        with Link(NAME):
            assert not {stale, f"{stale}r"} & namespaces()
            assert stale_if not in interfaces()
            assert kept in namespaces()  # its pid lives
    finally:
        alive.kill()
        alive.wait()
        for namespace in (stale, f"{stale}r", kept):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)
        subprocess.run(["ip", "link", "del", stale_if], capture_output=True)


def running(pid: int) -> bool:
    """Whether the process runs (an exited child of an exited parent may stay a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_crashed_run_stops_its_delay_program_and_the_next_open_removes_its_link() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-c", CRASHING_RUN, NAME]
    crashed = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert crashed.returncode == 1, crashed.stderr
    namespace, delay_pid = crashed.stdout.split()
    deadline = time.monotonic() + 5
    while running(int(delay_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(int(delay_pid)), "the delay program outlived its parent"
    assert namespace in namespaces()
    with Link(NAME):
        assert not {namespace, f"{namespace}r"} & namespaces()
