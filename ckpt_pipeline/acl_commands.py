"""``ckpt-pipeline acl``: the pods' Redis users on every node of the data side.

ACL users are per server, and a Redis Cluster's nodes neither share nor persist them: a
master that joins, a replica that is added, a node restarted without an ACL file, or a node
that was unreachable when a user was created or deleted, holds the wrong users. The pump
repairs that at every discovery interval (:func:`with_pod_users`, composed into its passes);
``acl sync`` does it once, now.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from redis.exceptions import RedisClusterException, RedisError

from producer.wire import as_text
from scorer_worker import keys
from scorer_worker.settings import Settings

from .cli_base import _data, _dump, _pod_user_policy, _redis, _settings

Owns = Callable[[str], bool]
log = logging.getLogger(__name__)


@click.group()
def acl() -> None:
    """The pods' Redis users on every node of the data side."""


@acl.command("sync")
def sync() -> None:
    """Make every node hold exactly the live pod users (those the jobs' meta records).

    Creates the users a node lacks (with their recorded password), disables those of cut-off
    jobs, resets a password that differs from the recorded one, and deletes the users of
    retired or unregistered jobs; prints what it did, node by node, as JSON. Exits 1 when a
    node did not answer or a user could not be recreated (no password recorded).
    """
    from scorer_worker.acl import sync_pod_users

    settings = _settings()
    redis = _redis(settings)
    job_ids = [as_text(member) for member in redis.smembers(keys.JOBS)]
    result = sync_pod_users(_data(settings, redis), job_ids, _pod_user_policy())
    click.echo(_dump(result.as_dict()))
    if result.unreachable or result.unrecoverable:
        sys.exit(1)


class PodUserKeeper:
    """The pump's reconciliation of pod users: ``sync_pod_users`` at most every ``interval_s``.

    A failed pass is logged, never raised: the pump's own work goes on, and the next interval
    tries again.

    Args:
        queue: the queue side (the job index).
        data: the data side (meta and users).
        interval_s: the least time between passes.
    """

    def __init__(self, queue: Any, data: Any, interval_s: float) -> None:
        self.queue, self.data, self.interval_s = queue, data, interval_s
        self.policy = _pod_user_policy()
        self._last: float | None = None

    def __call__(self, owns: Owns | None = None) -> Any:
        """Reconcile the jobs ``owns`` accepts (this pump's shard), unless it did lately.

        Returns:
            The pass's ``SyncResult``; None when it was skipped or failed.
        """
        from scorer_worker.acl import sync_pod_users

        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            return None
        self._last = now
        try:
            job_ids = [as_text(member) for member in self.queue.smembers(keys.JOBS)]
            result = sync_pod_users(self.data, job_ids, self.policy, owns=owns)
        except (RedisError, RedisClusterException) as exc:
            log.warning("pod users: reconciliation failed (%s); the next interval retries", exc)
            return None
        if result.changed:
            changes = {k: v for k, v in result.as_dict().items() if v and k != "nodes"}
            log.info("pod users reconciled: %s", changes)
        return result


def with_pod_users(
    after_pass: Callable[[Owns], object] | None, settings: Settings, queue: Any, data: Any
) -> Callable[[Owns], object]:
    """The pump's ``after_pass``: ``after_pass`` (the RunPod lifecycle), then the pod users'
    reconciliation every ``CKPT_DISCOVER_INTERVAL_S``.

    The shell composes it, because the rules live in ``remote.credentials``, which the pump's
    package may not import.
    """
    keeper = PodUserKeeper(queue, data, settings.discover_interval_s)

    def both(owns: Owns) -> None:
        if after_pass is not None:
            after_pass(owns)
        keeper(owns)

    return both
