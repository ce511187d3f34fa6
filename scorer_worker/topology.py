"""Where the keys live: the queue side and the data side, and the data side's nodes.

The queue side (``REDIS_URL``, one server, or a primary behind Sentinel) holds RQ's queues
and registries, the job index (``ckpt:jobs``) and the queued markers. The data side
(``CKPT_DATA_REDIS_URL``; the queue side's server when unset) holds each job's keys: its
stream, state, meta, decision, change set and dead letters. It may be a Redis Cluster: every
key of a job carries the job's hash tag, so a job lives on one node, and the functions here
say which node, so that work on many jobs is sent as one pipeline per node.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster


@dataclass(frozen=True)
class Sides:
    """The two clients of a process: ``queue`` (RQ, index, markers) and ``data`` (jobs).

    With one server, both are the same client.
    """

    queue: Any
    data: Any

    @classmethod
    def single(cls, client: Any) -> Sides:
        """Both sides on one client (one server, the default)."""
        return cls(client, client)


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client."""
    return isinstance(client, RedisCluster)


def cluster_enabled(url: str, **options: Any) -> bool:
    """Ask the server at ``url`` whether it runs in cluster mode (``INFO cluster``)."""
    probe = redis.Redis.from_url(url, **options)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    finally:
        probe.close()


def masters(client: Any) -> list[Any]:
    """A client for each master: the cluster's primaries, or ``client`` itself.

    For what is per server rather than per key (ACL users, script loading, SCAN).
    """
    if not is_cluster(client):
        return [client]
    return [client.get_redis_connection(node) for node in client.get_primaries()]


def scan_masters(client: Any, match: str, type_name: str | None = None) -> Iterator[Any]:
    """Every key matching ``match`` (of type ``type_name``), on every master."""
    for master in masters(client):
        yield from master.scan_iter(match=match, count=1000, _type=type_name)


def node_groups(client: Any, job_ids: Sequence[str]) -> list[tuple[Any, list[int]]]:
    """Group jobs by the node that holds them: ``[(node client, [indexes into job_ids])]``.

    One group (``client`` itself, every index) unless ``client`` is a cluster client.
    """
    if not is_cluster(client):
        return [(client, list(range(len(job_ids))))] if job_ids else []
    groups: dict[str, tuple[Any, list[int]]] = {}
    for index, job_id in enumerate(job_ids):
        node = client.get_node_from_key(f"{{{job_id}}}")
        entry = groups.get(node.name)
        if entry is None:
            entry = groups[node.name] = (client.get_redis_connection(node), [])
        entry[1].append(index)
    return list(groups.values())


def refresh(client: Any) -> None:
    """Re-read the cluster's slot map after a node failed or a slot moved (no-op otherwise)."""
    if is_cluster(client):
        client.nodes_manager.initialize()
