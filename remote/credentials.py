"""Per-job, publish-only Redis credentials for pods (trusted side).

A pod runs on a third-party machine with its credentials in the environment, so its Redis user
may do one thing: XADD to its own job's stream. No read (it cannot see its own events), no
other key (``XADD ... MAXLEN 0`` trims, so no shared key may be writable), no ``rq:*`` (RQ
runs any dotted name it finds in a job: queue access is code execution on the workers), no
scripting, no MULTI, no CONFIG.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from producer.wire import stream_key

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


def create_pod_user(redis: Any, job_id: str, public_redis_url: str) -> PodCredentials:
    """Create (or rotate) the pod user of ``job_id`` with a fresh password.

    Args:
        redis: a client with ACL administration rights.
        job_id: the job.
        public_redis_url: the Redis address as the pod reaches it; its credentials are replaced.
    """
    password = secrets.token_urlsafe(32)
    username = pod_username(job_id)
    # reset first: no keys, channels or commands; then exactly XADD on the job's own stream.
    redis.acl_setuser(
        username,
        reset=True,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[stream_key(job_id)],
        commands=["+xadd"],
    )
    url = with_credentials(public_redis_url, username, password)
    return PodCredentials(job_id, username, password, url)


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


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
