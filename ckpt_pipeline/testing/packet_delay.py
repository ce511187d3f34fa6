"""Hold every packet of an NFQUEUE queue for a fixed delay and drop a random share of them.

This is ``tc qdisc ... netem delay D loss P`` for kernels built without netem.
:meth:`ckpt_pipeline.testing.netfault.Link.degrade` starts it inside the link's network
namespace (an NFQUEUE netlink socket only sees the queues of its own namespace)::

    ip netns exec NS python -m ckpt_pipeline.testing.packet_delay --queue 0 --delay-ms 200 \
        --loss-pct 5

and sends the namespace's outgoing packets to the queue with an nft (or iptables) rule.

Line protocol (nothing else is written, so a test's output stays clean):

* stdout ``ready`` once the queue is bound: the caller adds the queue rule only then, so no
  packet is ever queued without a listener.
* stdin ``stats`` -> one JSON line ``{"delayed": n, "dropped": n, "held": n}``.
* EOF on stdin (the parent closed the pipe, or died), SIGTERM or SIGINT: every held packet is
  accepted at once, the final stats line is printed, and the program exits 0. It also exits
  when its parent process is gone (an inherited pipe could otherwise keep stdin open).

Packets are read with ``COPY_META`` (no payload is copied: only the verdict matters) and
given their verdict later from the main loop, which NetfilterQueue allows after the
callback returned. One constant delay on a FIFO keeps the order of the packets.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import select
import signal
import sys
import time

from netfilterqueue import COPY_META, NetfilterQueue

# Packets the kernel may hold for us before it drops new ones (its default is 1024, which a
# 200 ms delay of a busy connection fills). No fail-open flag: a full queue then loses
# packets, which is a fault, instead of silently letting them through undelayed.
MAX_QUEUE_LEN = 65536
# The loop wakes at least this often to notice that its parent is gone.
IDLE_WAKE_S = 0.5


class PacketDelay:
    """The queue, the held packets and the counters.

    Args:
        delay_s: how long each accepted packet is held.
        loss: the probability that a packet is dropped (0..1), drawn per packet.
        seed: seeds the loss draws (None: random).
    """

    def __init__(self, delay_s: float, loss: float, seed: int | None = None) -> None:
        self.delay_s = delay_s
        self.loss = loss
        self.rng = random.Random(seed)
        self.held: collections.deque = collections.deque()  # (due monotonic time, packet)
        self.delayed = 0
        self.dropped = 0

    def on_packet(self, packet) -> None:
        """NetfilterQueue callback: drop the packet now, or hold it for its delay.

        Args:
            packet: the ``netfilterqueue.Packet``; its verdict is given later by
                :meth:`release`.
        """
        if self.loss and self.rng.random() < self.loss:
            packet.drop()
            self.dropped += 1
            return
        self.held.append((time.monotonic() + self.delay_s, packet))

    def release(self, now: float | None = None) -> None:
        """Accept every held packet whose delay is over (all of them when ``now`` is None).

        Args:
            now: the current ``time.monotonic()``; None releases everything (shutdown).
        """
        while self.held and (now is None or self.held[0][0] <= now):
            self.held.popleft()[1].accept()
            self.delayed += 1

    def timeout(self) -> float:
        """Returns: the seconds until the next held packet is due (at most IDLE_WAKE_S)."""
        if not self.held:
            return IDLE_WAKE_S
        return min(IDLE_WAKE_S, max(0.0, self.held[0][0] - time.monotonic()))

    def stats(self) -> str:
        """Returns: the counters as one JSON line."""
        return json.dumps(
            {"delayed": self.delayed, "dropped": self.dropped, "held": len(self.held)}
        )


def run(queue_num: int, delay_s: float, loss: float, seed: int | None = None) -> int:
    """Bind the queue, say ``ready``, delay packets until told to stop.

    Args:
        queue_num: the NFQUEUE number the rule sends packets to.
        delay_s: the delay of every packet, in seconds.
        loss: the share of packets dropped (0..1).
        seed: seeds the loss draws.

    Returns:
        The exit status (0).
    """
    parent = os.getppid()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # The handler only sets a flag; the wakeup fd makes the select below return at once.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)  # Ctrl-C in a terminal reaches the whole group

    delay = PacketDelay(delay_s, loss, seed)
    queue = NetfilterQueue()
    queue.bind(queue_num, delay.on_packet, max_len=MAX_QUEUE_LEN, mode=COPY_META)
    queue_fd = queue.get_fd()
    stdin_fd = sys.stdin.fileno()
    pending = b""
    print("ready", flush=True)
    try:
        while not stopping and os.getppid() == parent:
            readable, _, _ = select.select([queue_fd, stdin_fd, wake_r], [], [], delay.timeout())
            if queue_fd in readable:
                queue.run(block=False)  # reads every queued message, calls on_packet
            delay.release(time.monotonic())
            if wake_r in readable:
                os.read(wake_r, 512)
            if stdin_fd in readable:
                chunk = os.read(stdin_fd, 4096)
                if not chunk:
                    break  # EOF: the parent wants us gone (or is gone)
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.strip() == b"stats":
                        print(delay.stats(), flush=True)
    finally:
        # Packets still held go out now: the rule is removed before we are stopped, so
        # dropping them would be a loss nobody asked for.
        delay.release()
        queue.unbind()
    print(delay.stats(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run.

    Args:
        argv: the arguments (``sys.argv[1:]`` by default).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=int, default=0, help="NFQUEUE number")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay of every packet")
    parser.add_argument("--loss-pct", type=float, default=0.0, help="%% of packets dropped")
    parser.add_argument("--seed", type=int, default=None, help="seed of the loss draws")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or not 0 <= args.loss_pct <= 100:
        parser.error("need --delay-ms >= 0 and 0 <= --loss-pct <= 100")
    return run(args.queue, args.delay_ms / 1000, args.loss_pct / 100, args.seed)


if __name__ == "__main__":
    sys.exit(main())
