"""Lua scripts as ``lua/<name>.lua`` files beside their package, read once, registered once.

The scorer's are in ``scorer_worker/lua/``, the sink's in ``sink/lua/``. Every key a script
touches is passed in ``KEYS`` (all of one job's keys share its hash tag, so one node holds
them), and field names come in ``ARGV`` from :mod:`scorer_worker.keys`.

redis-py's :class:`~redis.commands.core.Script` keeps the script's SHA and runs it with
EVALSHA (loading it again if the server lost it). One object per client and script, made
on first use, so a hot path does not rebuild it (and hash its text) on every call.
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis import exceptions as redis_errors
from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

from .errors import ReplicationTimeout
from .topology import is_cluster, node_groups, refresh

LUA_DIR = Path(__file__).with_name("lua")

_Scripts = dict[tuple[Path, str], Any]
_REGISTERED: weakref.WeakKeyDictionary[Any, _Scripts] = weakref.WeakKeyDictionary()


@functools.cache
def source(name: str, lua_dir: Path = LUA_DIR) -> str:
    """Return the text of ``<lua_dir>/<name>.lua``."""
    return (lua_dir / f"{name}.lua").read_text(encoding="utf-8")


def registered(redis: Any, name: str, lua_dir: Path = LUA_DIR) -> Any:
    """Return ``redis``'s registered script ``name`` (registered on first use)."""
    try:
        scripts = _REGISTERED.setdefault(redis, {})
    except TypeError:  # a client that cannot be weakly referenced: register every time
        return redis.register_script(source(name, lua_dir))
    if (lua_dir, name) not in scripts:
        scripts[(lua_dir, name)] = redis.register_script(source(name, lua_dir))
    return scripts[(lua_dir, name)]


# What a cluster answers while a failed master's slots move to its replica: the node groups
# are looked up again and the group is sent again (reads, and commits that are
# compare-and-set, so a commit applied before its reply was lost is refused, not doubled).
_TOPOLOGY_ERRORS = (
    ConnectionError, TimeoutError, MovedError, AskError, ClusterDownError, TryAgainError,
    redis_errors.ConnectionError, redis_errors.TimeoutError,
)  # fmt: skip
TOPOLOGY_WAIT_S = 30.0


_JobArgs = Callable[[int], Sequence[Any]]
_CallArgs = Callable[[list[int]], Sequence[Any]]


@dataclass(frozen=True)
class Wait:
    """``WAIT replicas timeout_ms`` after a node's commits, on the same connection."""

    replicas: int
    timeout_ms: int


def run_chunked(
    client: Any,
    name: str,
    job_ids: Sequence[str],
    job_keys: Callable[[str], list[str]],
    args: Sequence[Any],
    *,
    chunk_jobs: int,
    job_args: _JobArgs | None = None,
    call_args: _CallArgs | None = None,
    lua_dir: Path = LUA_DIR,
    wait: Wait | None = None,
    topology_wait_s: float = TOPOLOGY_WAIT_S,
) -> list[tuple[list[int], Any]]:
    """Run script ``name`` over ``job_ids``, one pipeline per node; return each call's reply.

    On one server a call covers up to ``chunk_jobs`` jobs; on a cluster, one job (all its
    keys share a slot), so no call spans two slots.

    Args:
        client: the data side (a plain client or a cluster client).
        job_keys: a job's ``KEYS`` (appended per job, in order).
        args: the ``ARGV`` every call starts with.
        job_args: more ``ARGV`` per job (by index into ``job_ids``), appended in order.
        call_args: more ``ARGV`` per call, given the call's indexes, appended last.
        wait: send ``WAIT`` after each node's calls (the commits' replication option).
        topology_wait_s: how long node failures are retried, the slot map re-read between.

    Returns:
        ``[(indexes into job_ids of the call's jobs, the call's reply)]``, node by node.

    Raises:
        ReplicationTimeout: ``wait`` was given and fewer replicas acknowledged in time.
    """
    size = 1 if is_cluster(client) else max(1, chunk_jobs)
    pending, replies = list(range(len(job_ids))), []
    deadline = time.monotonic() + topology_wait_s
    while pending:
        ids = [job_ids[i] for i in pending]
        failed: list[int] = []
        for node, positions in node_groups(client, ids):
            indexes = [pending[p] for p in positions]
            try:
                replies += _run_node(
                    node, name, job_ids, indexes, job_keys, args, size,
                    (job_args, call_args), lua_dir, wait,
                )  # fmt: skip
            except _TOPOLOGY_ERRORS:
                if not is_cluster(client) or time.monotonic() > deadline:
                    raise
                failed += indexes
        if failed:
            time.sleep(0.25)
            refresh(client)
        pending = failed
    return replies


def per_job(replies: list[tuple[list[int], Any]], count: int) -> list[Any]:
    """Spread :func:`run_chunked`'s replies of a script that answers one item per job (in
    ``KEYS`` order) back into ``job_ids`` order."""
    found: list[Any] = [None] * count
    for indexes, items in replies:
        for index, item in zip(indexes, items, strict=True):
            found[index] = item
    return found


def _run_node(
    node: Any, name: str, job_ids: Sequence[str], indexes: list[int],
    job_keys: Callable[[str], list[str]], args: Sequence[Any], size: int,
    extra: tuple[_JobArgs | None, _CallArgs | None],
    lua_dir: Path, wait: Wait | None,
) -> list[tuple[list[int], Any]]:  # fmt: skip
    job_args, call_args = extra
    script = registered(node, name, lua_dir)
    pipe = node.pipeline(transaction=False)
    chunks = [indexes[i : i + size] for i in range(0, len(indexes), size)]
    for chunk in chunks:
        argv = list(args)
        if job_args is not None:
            for index in chunk:
                argv.extend(job_args(index))
        if call_args is not None:
            argv.extend(call_args(chunk))
        call_keys = [key for index in chunk for key in job_keys(job_ids[index])]
        script(keys=call_keys, args=argv, client=pipe)
    if wait is not None:
        pipe.execute_command("WAIT", wait.replicas, wait.timeout_ms)
    results = pipe.execute()
    if wait is not None:
        acknowledged = int(results.pop())
        if acknowledged < wait.replicas:
            raise ReplicationTimeout(
                f"{acknowledged} of {wait.replicas} replicas acknowledged within "
                f"{wait.timeout_ms} ms"
            )
    return list(zip(chunks, results, strict=True))
