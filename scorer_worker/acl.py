"""The pods' Redis users on every node of the data side, and their reconciliation.

ACL users are per server: Redis Cluster neither replicates nor propagates them. So a pod's
user (DESIGN section 7 says what it may do) lives on every master, with or without slots (a
node checks the ACL before it redirects with MOVED, a pod's client may reach any master
first, and a master that joined empty has the users before slots move to it), and on every
replica (promoted by a failover, it serves the pod at once; before that it serves the pod
nothing: it redirects writes, and reads need ``READONLY``, which the pod may not run).

The record is each job's meta hash on the data side (``pod_user``, ``pod_password``,
``cut_off``); the nodes follow it. The rules come from the shell (:class:`PodUserPolicy`,
from ``remote.credentials``): this package does not import ``remote``. Passwords reach the
nodes as their SHA-256 (``#<hex>``), all a node keeps anyway.

:func:`install_pod_user` fails, naming the node, when a master does not take the user; a
replica, or a node the cluster marks failed, is left to the reconciliation, as are the nodes
:func:`delete_pod_user` and :func:`disable_pod_user` cannot reach. :func:`sync_pod_users`
(the pump, as the shell composes it into its passes, and ``ckpt-pipeline acl sync``) makes
every node hold exactly the live pod users.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import PRIMARY
from redis.exceptions import RedisError
from redis.retry import Retry

from producer.wire import as_text

from . import keys
from .errors import PipelineError
from .keys import JobMeta, MetaField
from .topology import is_cluster

log = logging.getLogger(__name__)

_POD_FIELDS = (MetaField.POD_USER, MetaField.POD_PASSWORD, MetaField.CUT_OFF)
# The cluster client's own connection hooks (READONLY on connect, maintenance notices): a
# plain client of one node runs without them.
_CLUSTER_ONLY_OPTIONS = ("redis_connect_func", "oss_cluster_maint_notifications_handler")


class PodUserError(PipelineError):
    """A pod user could not be put on a master of the data side."""


@dataclass(frozen=True)
class PodUserPolicy:
    """How pod users are named and what they may do (the shell passes ``remote.credentials``)."""

    username: Callable[[str], str]  # the user name of a job's pod
    job_of: Callable[[str], str | None]  # None for any other user: never touched here
    rules: Callable[..., Sequence[str]]  # rules(job_id, cluster=...): "reset" first, no password


@dataclass(frozen=True)
class Node:
    """One server of the data side: ``host:port``, a client of it alone, its role."""

    name: str
    client: Any
    master: bool = True  # with or without slots
    failed: bool = False  # the cluster marks it failed (down): not counted on at creation


@dataclass
class SyncResult:
    """What :func:`sync_pod_users` found and did; the dicts map a node to user names."""

    nodes: list[str] = field(default_factory=list)
    created: dict[str, list[str]] = field(default_factory=dict)
    disabled: dict[str, list[str]] = field(default_factory=dict)
    reset: dict[str, list[str]] = field(default_factory=dict)  # password set to the recorded
    deleted: dict[str, list[str]] = field(default_factory=dict)
    unreachable: list[str] = field(default_factory=list)
    # Users a node lacks while no password is recorded and no node holds them to copy from.
    unrecoverable: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Whether any node was changed."""
        return any((self.created, self.disabled, self.reset, self.deleted))

    def as_dict(self) -> dict[str, Any]:
        """The result as plain data (for JSON); it holds no secret."""
        return asdict(self)


@dataclass(frozen=True)
class _Seen:
    """A pod user as one node's ``ACL LIST`` shows it."""

    enabled: bool
    digests: tuple[str, ...]


def data_nodes(data: Any) -> list[Node]:
    """Every node of the data side: ``data`` itself, or a fresh client of each cluster node.

    A cluster's nodes come from ``CLUSTER NODES``, which also lists a master that joined
    without slots (``CLUSTER SLOTS``, hence redis-py's slot map, omits it). Their clients
    keep ``data``'s credentials and timeouts but do not retry: a node that does not answer
    is reported at once, not waited for. :func:`open_nodes` closes them.

    Raises:
        redis.RedisError: no known node of the cluster answered.
    """
    if not is_cluster(data):
        return [Node(_address(data), data)]
    options = _node_options(data)
    nodes = []
    for address, entry in sorted(_cluster_view(data, options).items()):
        flags = set(str(entry.get("flags", "")).split(","))
        if flags & {"handshake", "noaddr"}:
            continue  # not a member yet, or no address to reach it at
        host, _, port = address.rpartition(":")
        client = redis.Redis(host=host, port=int(port), **options)
        nodes.append(Node(address, client, "master" in flags, "fail" in flags))
    return nodes


@contextmanager
def open_nodes(data: Any) -> Iterator[list[Node]]:
    """:func:`data_nodes`, closing the clients it opened on exit (``data`` itself stays open)."""
    nodes = data_nodes(data)
    try:
        yield nodes
    finally:
        for node in nodes:
            if node.client is not data:
                node.client.close()


def install_pod_user(data: Any, job_id: str, password: str, policy: PodUserPolicy) -> list[str]:
    """Create (or rotate) ``job_id``'s pod user on every node of the data side.

    Record the user in the job's meta first (``registry.record_pod_user``): a reconciliation
    running meanwhile then completes it rather than deleting it as a stray. ``password`` is
    sent as its SHA-256.

    Returns:
        The nodes that hold the user now.

    Raises:
        PodUserError: a master (one the cluster does not mark failed) refused or did not
            answer; the message names it. The other nodes keep the user: delete it
            (``registry.drop_pod_user``) or run this again.
    """
    command = _setuser(policy, job_id, _digest(password), is_cluster(data))
    done, missed = [], []
    with open_nodes(data) as nodes:
        for node in nodes:
            try:
                node.client.execute_command(*command)
            except RedisError as exc:
                if node.master and not node.failed:
                    missed.append(f"{node.name} ({_reason(exc)})")
                else:  # a promoted replica or a returning node gets it from the reconciliation
                    log.warning("pod user of %s not created on %s: %s", job_id, node.name, exc)
                continue
            done.append(node.name)
    if missed:
        raise PodUserError(
            f"the pod user of job {job_id} could not be created on master {', '.join(missed)}"
        )
    return done


def delete_pod_user(data: Any, username: str) -> list[str]:
    """Delete ``username`` on every node that answers (its connections close with it).

    A node that does not answer is logged and left to :func:`sync_pod_users`, which deletes a
    user its job's meta no longer records.

    Returns:
        The nodes that answered.
    """
    return _on_each_node(data, username, "deleted", lambda client: client.acl_deluser(username))


def disable_pod_user(data: Any, username: str) -> list[str]:
    """Disable ``username`` and close its connections on every node that answers.

    ``ACL SETUSER ... off`` alone leaves open connections working, hence ``CLIENT KILL USER``.
    A node that does not answer is logged and left to :func:`sync_pod_users`, which disables
    the user of a job cut off.

    Returns:
        The nodes that answered.
    """

    def disable(client: Any) -> None:
        if client.acl_getuser(username) is not None:  # a SETUSER would create a missing one
            client.execute_command("ACL", "SETUSER", username, "off")
            client.execute_command("CLIENT", "KILL", "USER", username)

    return _on_each_node(data, username, "disabled", disable)


def _on_each_node(
    data: Any, username: str, what: str, action: Callable[[Any], object]
) -> list[str]:
    answered = []
    with open_nodes(data) as nodes:
        for node in nodes:
            try:
                action(node.client)
            except RedisError as exc:
                log.warning(
                    "pod user %s not %s on %s (%s); the reconciliation will do it",
                    username, what, node.name, _reason(exc),
                )  # fmt: skip
                continue
            answered.append(node.name)
    return answered


def sync_pod_users(
    data: Any,
    job_ids: Iterable[str],
    policy: PodUserPolicy,
    *,
    owns: Callable[[str], bool] | None = None,
) -> SyncResult:
    """Make every node of the data side hold exactly the live pod users.

    Live: recorded in its job's meta (``pod_user``). A node lacking one gets it with the
    recorded password (or, with none recorded, another node's); a cut-off job's is disabled;
    a password other than the recorded one is reset; a user whose meta no longer records it
    is deleted. The jobs looked at are ``job_ids`` (the index: a user missing everywhere is
    found there) and the job of every pod user a node holds (a stray is found there, so a lost
    index deletes nothing the meta records), those ``owns`` accepts (a pump's shard).

    The nodes are read before the meta, so what is written is at least as new as what was
    seen. A user is never enabled here: a missing one is created disabled when its job is cut
    off or another node holds it disabled.

    Returns:
        What was done where; a node that did not answer is listed, not raised.

    Raises:
        redis.RedisError: the cluster's node list or the jobs' meta could not be read.
    """
    result = SyncResult()
    with open_nodes(data) as nodes:
        result.nodes = [node.name for node in nodes]
        seen: dict[str, dict[str, _Seen]] = {}
        for node in nodes:
            try:
                seen[node.name] = _observe(node.client, policy)
            except RedisError as exc:
                log.warning("pod users: node %s unreachable (%s)", node.name, _reason(exc))
                result.unreachable.append(node.name)
        found = {policy.job_of(user) for users in seen.values() for user in users}
        jobs = sorted(j for j in (found - {None}) | set(job_ids) if owns is None or owns(j))
        live = _live_users(data, jobs, policy)
        for node in (node for node in nodes if node.name in seen):
            _settle(node, seen, live, set(jobs), policy, is_cluster(data), result)
    return result


@dataclass(frozen=True)
class _Live:
    """A live pod user: its job and what its meta records."""

    job_id: str
    digest: str | None
    cut_off: bool


def _live_users(data: Any, job_ids: list[str], policy: PodUserPolicy) -> dict[str, _Live]:
    pipe = data.pipeline(transaction=False)  # on a cluster, split by node
    for job_id in job_ids:
        pipe.hmget(keys.meta(job_id), *_POD_FIELDS)
    live = {}
    for job_id, values in zip(job_ids, pipe.execute() if job_ids else [], strict=True):
        meta = JobMeta.from_hash(dict(zip(_POD_FIELDS, values, strict=True)))
        if meta.pod_user and meta.pod_user == policy.username(job_id):
            digest = _digest(meta.pod_password) if meta.pod_password else None
            live[meta.pod_user] = _Live(job_id, digest, meta.cut_off is not None)
    return live


def _settle(
    node: Node, seen: dict[str, dict[str, _Seen]], live: dict[str, _Live], looked_at: set[str],
    policy: PodUserPolicy, cluster: bool, result: SyncResult,
) -> None:  # fmt: skip
    """Send one node the changes it needs, in one pipeline; record those that took."""
    here, plan = seen[node.name], []  # (where the result goes, user, commands)
    for user in here:
        if user not in live and policy.job_of(user) in looked_at:  # retired, or never made
            plan.append((result.deleted, user, [["ACL", "DELUSER", user]]))
    for user, job in live.items():
        holders = [users[user] for users in seen.values() if user in users]
        have = here.get(user)
        if have is None:
            digest = job.digest or next((h.digests[0] for h in holders if h.digests), None)
            if digest is None:
                if user not in result.unrecoverable:  # one entry, however many nodes lack it
                    result.unrecoverable.append(user)
                continue
            enabled = not job.cut_off and all(h.enabled for h in holders)
            plan.append((result.created, user, [_setuser(policy, job, digest, cluster, enabled)]))
            continue
        if job.digest is not None and have.digests != (job.digest,):
            setuser = _setuser(policy, job, job.digest, cluster, have.enabled)
            plan.append((result.reset, user, [setuser]))
        if job.cut_off and have.enabled:
            kill = ["CLIENT", "KILL", "USER", user]
            plan.append((result.disabled, user, [["ACL", "SETUSER", user, "off"], kill]))
    if not plan:
        return
    pipe = node.client.pipeline(transaction=False)
    for command in (command for _, _, commands in plan for command in commands):
        pipe.execute_command(*command)
    try:
        replies = iter(pipe.execute(raise_on_error=False))
    except RedisError as exc:
        log.warning("pod users: node %s unreachable (%s)", node.name, _reason(exc))
        result.unreachable.append(node.name)
        return
    for done, user, commands in plan:
        failed = [r for r in (next(replies) for _ in commands) if isinstance(r, Exception)]
        if failed:
            log.warning("pod user %s on %s: %s", user, node.name, _reason(failed[0]))
        else:
            done.setdefault(node.name, []).append(user)


def _observe(client: Any, policy: PodUserPolicy) -> dict[str, _Seen]:
    """The pod users one node holds, read from ``ACL LIST`` (one round trip)."""
    users = {}
    for line in client.execute_command("ACL", "LIST"):
        # "user <name> on|off [flags] [#<sha256> ...] <rules>": rules never begin with "#".
        words = as_text(line).split(" ")
        if len(words) > 2 and policy.job_of(words[1]) is not None:
            digests = tuple(sorted(w[1:] for w in words[2:] if w.startswith("#")))
            users[words[1]] = _Seen(words[2] == "on", digests)
    return users


def _setuser(
    policy: PodUserPolicy, job: _Live | str, digest: str, cluster: bool, enabled: bool = True
) -> list[Any]:
    # The password after the rules: their "reset" clears passwords; a later "off" wins.
    job_id = job if isinstance(job, str) else job.job_id
    rules = policy.rules(job_id, cluster=cluster)
    off = [] if enabled else ["off"]
    return ["ACL", "SETUSER", policy.username(job_id), *rules, f"#{digest}", *off]


def _digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def _cluster_view(data: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``CLUSTER NODES`` from the first known node that answers (masters first)."""
    known = sorted(data.get_nodes(), key=lambda node: node.server_type != PRIMARY)
    error: RedisError = redis.ConnectionError("the cluster client knows no node")
    for node in known:
        client = redis.Redis(host=node.host, port=node.port, **options)
        try:
            return client.cluster("NODES")
        except RedisError as exc:
            error = exc
        finally:
            client.close()
    raise error


def _node_options(data: Any) -> dict[str, Any]:
    options = {
        name: value
        for name, value in data.nodes_manager.connection_kwargs.items()
        if name not in _CLUSTER_ONLY_OPTIONS
    }
    options["retry"] = Retry(NoBackoff(), 0)
    return options


def _address(client: Any) -> str:
    kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'redis')}:{kwargs.get('port', 6379)}"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
