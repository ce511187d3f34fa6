"""Per-job Redis credentials for pods (trusted side): append events, read the decision.

A pod runs on a third-party machine with its credentials in the environment, so its Redis user
may do exactly two things (DESIGN section 7):

- ``XADD`` to its own job's stream ``ckpt:{<job>}:events``, with write-only key access: it
  cannot read its own events back;
- ``HMGET`` its own job's decision ``ckpt:{<job>}:decision`` (the closed loop: the callback
  reads the score of each evaluation), with read-only key access: it cannot write, delete or
  expire the decision, nor read another job's.

A Redis 7 ACL selector scopes each command to its key: the root permissions allow ``XADD`` on
the stream only, the selector ``HMGET`` on the decision only, so ``XADD`` on the decision key
and ``HMGET`` on the stream are refused too. Everything else stays denied: no other key
(``XADD ... MAXLEN 0`` trims, so no shared key may be writable), no ``rq:*`` (RQ runs any
dotted name it finds in a job: queue access is code execution on the workers), no scripting,
no MULTI, no CONFIG, no KEYS/SCAN, no ACL or CLIENT commands, no channels.

On a Redis Cluster the pod's client must find the node that holds its job's slot, so a pod
user made for a cluster (``cluster=True``) may also run the three keyless commands redis-py's
``RedisCluster`` sends on its own (:data:`CLUSTER_DISCOVERY_RULES`); none reads or writes a
key, and the key rules above still apply to everything else.

ACL users are per server. This module makes one user on one server; the trusted side puts it
on every node of the data side (``scorer_worker.acl``), with the rules given here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from producer.wire import decision_key, is_valid_job_id, stream_key

POD_USER_PREFIX = "ckpt-pod-"


@dataclass(frozen=True)
class PodCredentials:
    """A pod's Redis user and password, and the URL the pod publishes with."""

    job_id: str
    username: str
    password: str
    redis_url: str

    def masked(self) -> dict[str, str]:
        """Return the credentials with the password replaced by ``***`` (for logs)."""
        return {
            "job_id": self.job_id,
            "redis_user": self.username,
            "redis_url": self.redis_url.replace(quote(self.password, safe=""), "***"),
        }


def pod_username(job_id: str) -> str:
    """Return the Redis ACL user name of ``job_id``'s pod."""
    return f"{POD_USER_PREFIX}{job_id}"


def job_of_pod_username(username: str) -> str | None:
    """Return the job whose pod user ``username`` is, or None for any other user."""
    job_id = username.removeprefix(POD_USER_PREFIX)
    return job_id if username.startswith(POD_USER_PREFIX) and is_valid_job_id(job_id) else None


# What redis-py's RedisCluster runs by itself, and nothing more (each found missing with a
# real pod client against a real cluster): CLUSTER SLOTS to learn which node holds which
# slots (at start, and again after a MOVED or a failed node), COMMAND to learn where each
# command's keys are (read once, when the client is made), and ASKING, sent before a command
# redirected by ASK while its slot migrates to a new node. They reveal the cluster's node
# addresses and the command table, which is public; CLUSTER NODES, SETSLOT, RESET, FAILOVER
# and every other subcommand stay denied.
CLUSTER_DISCOVERY_RULES = ("+cluster|slots", "+command", "+asking")


def pod_acl_rules(job_id: str, *, cluster: bool = False) -> list[str]:
    """Return the ``ACL SETUSER`` rules of ``job_id``'s pod user, without its password.

    ``reset`` first (off, no password, no keys, no channels, no commands, no selectors), then
    the two grants of the module docstring. ``%W~`` suffices for ``XADD`` (it inserts, it does
    not return data) and ``%R~`` for ``HMGET``; each command is granted only beside its key.

    Args:
        job_id: the job.
        cluster: the user is for a node of a Redis Cluster: add
            :data:`CLUSTER_DISCOVERY_RULES`, which the pod's cluster client needs.

    Raises:
        ValueError: if ``job_id`` is not a valid job id.
    """
    discovery = list(CLUSTER_DISCOVERY_RULES) if cluster else []
    return [
        "reset",
        "on",
        f"%W~{stream_key(job_id)}",
        "+xadd",
        *discovery,
        f"(%R~{decision_key(job_id)} +hmget)",
    ]


def new_pod_credentials(job_id: str, public_redis_url: str) -> PodCredentials:
    """Choose the user name and a fresh password of ``job_id``'s pod (no Redis call).

    Args:
        job_id: the job.
        public_redis_url: the Redis address as the pod reaches it; its credentials are replaced.

    Returns:
        The credentials; ``redis_url`` carries the user and password for the pod.
    """
    password = secrets.token_urlsafe(32)
    username = pod_username(job_id)
    return PodCredentials(
        job_id, username, password, with_credentials(public_redis_url, username, password)
    )


def create_pod_user(
    redis: Any, job_id: str, public_redis_url: str, *, cluster: bool = False
) -> PodCredentials:
    """Create (or rotate) the pod user of ``job_id`` on one server, with a fresh password.

    The user may XADD to the job's stream and HMGET the job's decision, nothing else (see
    :func:`pod_acl_rules`). Rotating resets every earlier permission and password. For a data
    side of several nodes (a Redis Cluster), ``scorer_worker.acl.install_pod_user`` puts the
    user on each of them.

    Args:
        redis: a client with ACL administration rights (Redis 7 or later: ACL selectors).
        job_id: the job.
        public_redis_url: the Redis address as the pod reaches it; its credentials are replaced.
        cluster: ``redis`` is a node of a Redis Cluster (see :func:`pod_acl_rules`).

    Returns:
        The credentials; ``redis_url`` carries the user and password for the pod.
    """
    credentials = new_pod_credentials(job_id, public_redis_url)
    rules = pod_acl_rules(job_id, cluster=cluster)
    # The password goes after reset, which clears passwords. This command carries the
    # password: it is sent, never logged.
    redis.execute_command(
        "ACL", "SETUSER", credentials.username, *rules, f">{credentials.password}"
    )
    return credentials


def delete_pod_user(redis: Any, job_id: str) -> bool:
    """Delete ``job_id``'s pod user; return True when one existed."""
    return bool(redis.acl_deluser(pod_username(job_id)))


def with_credentials(url: str, username: str, password: str) -> str:
    """Return ``url`` with its user and password replaced."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme or "redis", netloc, parts.path or "/0", "", ""))
