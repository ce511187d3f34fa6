"""TCP options that let a client notice a dead peer instead of waiting on it for hours.

A blackholed link (packets dropped, nothing refused) gives a socket no error: a blocked read
waits for its whole timeout (RQ sets 415 s on its dequeue connection), and unacknowledged
data is retransmitted for about 15 minutes. Keepalive probes find a silent peer after
``idle + interval * count`` seconds of silence, and ``TCP_USER_TIMEOUT`` aborts a connection
whose sent data stays unacknowledged that long; either way redis-py sees a connection error
and its retry policy reconnects. Standard library only (embedded in the pod script).
"""

from __future__ import annotations

import socket

KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3
# Longer than a lossy link's worst retransmission (200 ms RTT, a few losses in a row), far
# shorter than Linux's default of about 15 minutes.
USER_TIMEOUT_MS = 15_000
KEEPALIVE_DEFAULTS = {
    "idle_s": KEEPALIVE_IDLE_S,
    "interval_s": KEEPALIVE_INTERVAL_S,
    "count": KEEPALIVE_COUNT,
    "user_timeout_ms": USER_TIMEOUT_MS,
}


def tcp_keepalive_options(
    idle_s: int = KEEPALIVE_IDLE_S,
    interval_s: int = KEEPALIVE_INTERVAL_S,
    count: int = KEEPALIVE_COUNT,
    user_timeout_ms: int = USER_TIMEOUT_MS,
) -> dict[int, int]:
    """Return ``{option: value}`` for redis-py's ``socket_keepalive_options``.

    Options the platform lacks are left out (macOS has no ``TCP_USER_TIMEOUT``).

    Args:
        idle_s: silence before the first probe.
        interval_s: time between unanswered probes.
        count: unanswered probes before the connection is dropped.
        user_timeout_ms: the longest sent data may stay unacknowledged (0: the OS default).
    """
    wanted = {
        "TCP_KEEPIDLE": idle_s,
        "TCP_KEEPINTVL": interval_s,
        "TCP_KEEPCNT": count,
        "TCP_USER_TIMEOUT": user_timeout_ms,
    }
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


def redis_socket_options(
    connect_timeout_s: float, read_timeout_s: float, **keepalive: int
) -> dict[str, object]:
    """Return the redis-py client options for a client that must not hang on a dead peer.

    Args:
        connect_timeout_s: the longest a connect may take (a blackholed SYN is not refused).
        read_timeout_s: the longest a reply may take (RQ raises it for its blocking dequeue).
        **keepalive: passed to :func:`tcp_keepalive_options`.
    """
    return {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": read_timeout_s,
        "socket_keepalive": True,
        "socket_keepalive_options": tcp_keepalive_options(**keepalive),
    }
