"""Job registration (trusted side): the job's token and its place in the active set."""

from __future__ import annotations

import time
from typing import Any

from producer.wire import is_valid_job_id

from . import keys


def register_job(redis: Any, job_id: str, job_token: str) -> None:
    """Store the job's token and add it to ``ckpt:jobs``.

    Re-registering resets what the sink last wrote, so the row is written again with the
    (possibly new) token.

    Raises:
        ValueError: on an invalid job id or an empty token.
    """
    if not is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: expected 1-64 of [A-Za-z0-9_-]")
    if not job_token:
        raise ValueError("the job token must not be empty")
    pipe = redis.pipeline(transaction=True)
    pipe.hset(keys.meta(job_id), mapping={"token": job_token, "registered_at": repr(time.time())})
    pipe.hdel(
        keys.meta(job_id), "written_version", "refused_version", "sink_error", "sink_error_kind"
    )
    pipe.sadd(keys.JOBS, job_id)
    pipe.execute()


def unregister_job(redis: Any, job_id: str) -> None:
    """Remove the job from the active set and delete its pod user (state and row stay)."""
    redis.srem(keys.JOBS, job_id)
    drop_pod_user(redis, job_id)


def record_pod_user(redis: Any, job_id: str, username: str) -> None:
    """Remember the job's pod ACL user, so it is deleted when the job ends."""
    redis.hset(keys.meta(job_id), "pod_user", username)


def drop_pod_user(redis: Any, job_id: str) -> bool:
    """Delete the job's pod ACL user, if it has one; return True when one was deleted."""
    username = redis.hget(keys.meta(job_id), "pod_user")
    if not username:
        return False
    redis.acl_deluser(username.decode() if isinstance(username, bytes) else username)
    redis.hdel(keys.meta(job_id), "pod_user")
    return True
