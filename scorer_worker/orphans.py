"""The server-side remains of connections a network fault cut, closed on reconnect.

On a blackholed link a client gives up its socket (TCP keepalive, a timeout) and the server
never hears of it: it keeps the connection until its own ``tcp-keepalive`` notices (300 s by
default). An RQ worker's connection dies that way inside its blocking ``BLMOVE``, and the
server keeps that ``BLMOVE`` as a waiting consumer of the queue: the next task pushed there is
handed to the dead connection (moved to RQ's intermediate list, which RQ cleans minutes
later), and the job waits for the pump's queued-marker TTL to be enqueued again
(RELIABILITY.md, experiment 14).

:class:`ReapingConnection` records each connection's server-side id (``CLIENT ID``, on
connect) and its local address; when the connection is dropped, the next connection of the
process to the same server closes what is left of it with ``CLIENT KILL ID <id> ADDR
<address>`` (both must match, so an id reused after a server restart cannot name another
process's connection). A connection that was closed cleanly is already gone: the kill then
finds nothing, which costs one round trip.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, ClassVar

import redis
from redis.connection import Connection

# Dropped connections remembered per server; more than this are left to the server's own
# keepalive (a process that lost that many connections without reconnecting has other
# problems).
MAX_ORPHANS_PER_SERVER = 64


class ReapingConnection(Connection):
    """A ``redis.connection.Connection`` that closes its predecessors' server-side remains.

    For the queue side's long-lived processes (``RetryingRedis``: the RQ workers and the
    pump). Needs ``CLIENT ID`` and ``CLIENT KILL`` (the workers' trusted user has them); a
    refusal is ignored, and the dead connection is then left to the server's keepalive.
    """

    # Process-wide: the orphans of a process are its own connections, whichever pool made
    # them (RQ builds several clients from one URL).
    _orphans: ClassVar[dict[tuple[Any, ...], deque[tuple[int, str]]]] = {}
    _orphans_lock: ClassVar[threading.Lock] = threading.Lock()

    def on_connect_check_health(self, check_health: bool = True) -> None:
        """Handshake as usual, then close the remains of this process's dropped connections
        to the server and record this one's id."""
        super().on_connect_check_health(check_health=check_health)
        for client_id, address in self._take_orphans():
            try:
                self.send_command("CLIENT", "KILL", "ID", client_id, "ADDR", address)
                self.read_response()
            except redis.ResponseError:
                pass  # gone already (a clean close), or the user may not kill: the keepalive will
        self.send_command("CLIENT", "ID")
        client_id = int(self.read_response())
        host, port = self._sock.getsockname()[:2]
        self._server_identity = (client_id, f"{host}:{port}")

    def disconnect(self, *args: Any, **kwargs: Any) -> None:
        """Drop the socket, remembering the server-side id for the next connection to kill."""
        identity = getattr(self, "_server_identity", None)
        self._server_identity = None
        if identity is not None:
            with self._orphans_lock:
                queue = self._orphans.setdefault(
                    self._server_key(), deque(maxlen=MAX_ORPHANS_PER_SERVER)
                )
                queue.append(identity)
        super().disconnect(*args, **kwargs)

    def _take_orphans(self) -> list[tuple[int, str]]:
        with self._orphans_lock:
            queue = self._orphans.get(self._server_key())
            taken = list(queue or ())
            if queue:
                queue.clear()
        return taken

    def _server_key(self) -> tuple[Any, ...]:
        return (self.host, self.port, self.username)
