"""Job registration (trusted side): the job's token and its place in the active set."""

from __future__ import annotations

import time
from typing import Any

from producer.wire import as_text, is_valid_job_id

from . import keys
from .acl import delete_pod_user
from .keys import SECRET_FIELDS, JobMeta, MetaField

# What the sink last wrote: reset by a registration, so the row is written again.
SINK_FIELDS = (
    MetaField.WRITTEN_VERSION, MetaField.REFUSED_VERSION, MetaField.SINK_ERROR,
    MetaField.SINK_ERROR_KIND,
)  # fmt: skip


def register_job(redis: Any, job_id: str, job_token: str, *, data: Any = None) -> None:
    """Store the job's token (data side) and add it to ``ckpt:jobs`` (queue side).

    Re-registering resets what the sink last wrote, so the row is written again with the
    (possibly new) token. The token is stored first, so the pump never sees the job
    without it.

    Args:
        redis: the queue side.
        data: the data side; ``redis`` itself by default.

    Raises:
        ValueError: on an invalid job id or an empty token.
    """
    if not is_valid_job_id(job_id):
        raise ValueError(f"invalid job id {job_id!r}: expected 1-64 of [A-Za-z0-9_-]")
    if not job_token:
        raise ValueError("the job token must not be empty")
    pipe = (data if data is not None else redis).pipeline(transaction=True)  # one slot
    registration = {MetaField.TOKEN: job_token, MetaField.REGISTERED_AT: repr(time.time())}
    pipe.hset(keys.meta(job_id), mapping=registration)
    pipe.hdel(keys.meta(job_id), *SINK_FIELDS)
    pipe.execute()
    redis.sadd(keys.JOBS, job_id)


def unregister_job(redis: Any, job_id: str, *, data: Any = None) -> None:
    """Remove the job from the active set (queue side, ``redis``) and delete its pod user
    (data side, ``data``, by default ``redis``); state and row stay."""
    redis.srem(keys.JOBS, job_id)
    drop_pod_user(data if data is not None else redis, job_id)


def record_pod_user(redis: Any, job_id: str, username: str, password: str | None = None) -> None:
    """Remember the job's pod ACL user, so it is deleted when the job ends.

    The password is kept (in the trusted meta hash, beside the job token) so that every
    operator-facing output can redact it.
    """
    mapping = {MetaField.POD_USER: username}
    if password:
        mapping[MetaField.POD_PASSWORD] = password
    redis.hset(keys.meta(job_id), mapping=mapping)


def job_secrets(redis: Any, job_id: str) -> tuple[str, ...]:
    """Return the job's secrets (token, pod password) that outputs must redact."""
    values = redis.hmget(keys.meta(job_id), *SECRET_FIELDS)
    return JobMeta.from_hash(dict(zip(SECRET_FIELDS, values, strict=True))).secrets


def drop_pod_user(redis: Any, job_id: str) -> bool:
    """Delete the job's pod ACL user, if it has one, on every node of the data side.

    The record goes first: a reconciliation running meanwhile then deletes the user too,
    rather than completing it. A node that does not answer keeps the user until the
    reconciliation (``acl.sync_pod_users``) deletes it there.

    Args:
        redis: the data side (the job's meta, and the nodes that hold the user).
        job_id: the job.

    Returns:
        True when the job had a pod user.
    """
    username = redis.hget(keys.meta(job_id), MetaField.POD_USER)
    if not username:
        return False
    # The password stays: old outputs may quote it, and they are redacted by it.
    redis.hdel(keys.meta(job_id), MetaField.POD_USER)
    delete_pod_user(redis, as_text(username))
    return True
