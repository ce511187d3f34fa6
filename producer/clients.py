"""Redis clients of the producer side: a plain server's, or a Redis Cluster's.

Standard library and ``redis`` only (embedded in the pod script).
"""

from __future__ import annotations

from typing import Any


def open_redis(url: str, **options: Any) -> Any:
    """Open a client of ``url``: a ``RedisCluster`` when the server is a Redis Cluster node.

    The server is asked with ``CLUSTER SLOTS``, which a cluster client runs first anyway. A
    plain server refuses it, and so does a pod's user on a plain server (its ACL grants it on
    a cluster only, for this): the plain client is kept. Any other failure (Redis down) is
    raised, so the caller spools and asks again later.

    Args:
        url: the Redis URL (the pod's carries its user and password).
        **options: ``redis.Redis`` / ``RedisCluster`` options (timeouts).
    """
    import redis  # imported here so that building events needs no redis package

    client = redis.Redis.from_url(url, **options)
    try:
        client.execute_command("CLUSTER", "SLOTS")
    except redis.ResponseError:
        return client  # a plain server: this client is the one
    except BaseException:
        client.close()
        raise
    client.close()  # a cluster node: the cluster client opens its own connections
    from redis.cluster import RedisCluster

    return RedisCluster.from_url(url, **options)
