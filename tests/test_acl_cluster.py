"""Pod credentials on a real Redis Cluster (issue #15, item 3): a pod's ACL user on every node.

The data side is a private cluster (3 masters, 3 replicas) and the queue side the suite's
private redis-server. ACL users are per server, so each probe is made on every node: the user
is there with the recorded password and its own job's rights only (``ACL DRYRUN``), a login
with the pod's password works there, and the pod's own client (the producer's publisher)
publishes through the cluster. The single-server path is probed too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import signal
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError, NoPermissionError, RedisClusterException
from redis.retry import Retry

from ckpt_pipeline.testing.convergence import wait_until
from ckpt_pipeline.testing.local_cluster import ClusterNode, LocalCluster
from producer.events import build_event
from producer.publisher import EventPublisher, open_redis
from remote.credentials import CLUSTER_DISCOVERY_RULES as DISCOVERY
from remote.credentials import job_of_pod_username, pod_acl_rules, pod_username
from scorer_worker import keys
from scorer_worker.acl import PodUserPolicy, install_pod_user, sync_pod_users
from scorer_worker.limits import cut_off_job
from scorer_worker.registry import drop_pod_user, record_pod_user
from tests.runpod_fake import FakeRunPod
from tests.runpod_jobs import cli, runpod_env, write_spec

pytestmark = pytest.mark.slow

POLICY = PodUserPolicy(pod_username, job_of_pod_username, pod_acl_rules)
# What the pod may run, and a table of what it may not ({own}/{other}: its job's keys, another's).
ALLOWED = [
    ("XADD", "{own}:events", "*", "event", "{}"), ("HMGET", "{own}:decision", "version"),
    ("CLUSTER", "SLOTS"), ("COMMAND",), ("COMMAND", "INFO", "xadd"), ("ASKING",),
]  # fmt: skip
REFUSED = [
    ("XADD", "{other}:events", "*", "event", "{}"), ("HMGET", "{other}:decision", "version"),
    ("XADD", "{own}:decision", "*", "event", "{}"), ("HMGET", "{own}:events", "event"),
    ("HSET", "{own}:decision", "version", "9"), ("XRANGE", "{own}:events", "-", "+"),
    ("XTRIM", "{own}:events", "MAXLEN", "0"), ("DEL", "{own}:events"), ("GET", "{own}:state"),
    ("HGETALL", "{own}:meta"), ("LPUSH", "rq:queue:scoring", "x"), ("EVAL", "return 1", "0"),
    ("MULTI",), ("KEYS", "*"), ("SCAN", "0"), ("CONFIG", "GET", "*"), ("ACL", "LIST"),
    ("CLIENT", "LIST"), ("FLUSHALL",), ("READONLY",), ("PUBLISH", "c", "m"), ("INFO",),
    ("CLUSTER", "NODES"), ("CLUSTER", "SHARDS"), ("CLUSTER", "SETSLOT", "1", "STABLE"),
    ("CLUSTER", "RESET"), ("CLUSTER", "FAILOVER"), ("CLUSTER", "FORGET", "x"),
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster no test below stops a node of or adds one to."""
    with LocalCluster(tmp_path_factory.mktemp("acl-cluster")) as started:
        yield started


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A cluster for the tests that stop, kill or add nodes, no failover within a minute (so a
    node that does not answer stays a master). Each leaves every node running; the last one
    adds masters."""
    with LocalCluster(tmp_path_factory.mktemp("own"), node_timeout_ms=60_000) as started:
        yield started


@pytest.fixture
def runpod_api() -> Iterator[FakeRunPod]:
    server = FakeRunPod().start()
    yield server
    server.stop()
    assert server.answer_errors == []


def on(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> RedisCluster:
    """Put the data side (CKPT_DATA_REDIS_URL) on ``cluster``, emptied; return a client of it."""
    monkeypatch.setenv("CKPT_DATA_REDIS_URL", cluster.url)
    for node in cluster.nodes:
        with node.client(decode_responses=True) as admin:
            for user in filter(job_of_pod_username, admin.acl_users()):
                admin.acl_deluser(user)
            if node.role == "master":
                admin.flushall()
    return cluster.client()


def register(job: str) -> tuple[str, str]:
    """``ckpt-pipeline register JOB tok --pod-credentials``: the pod's (password, redis_url)."""
    done = cli("register", job, "tok", "--pod-credentials")
    assert done.exit_code == 0, done.output
    url = json.loads(done.stdout)["redis_url"]
    return redis.connection.parse_url(url)["password"], url


def acl_user(node: ClusterNode, user: str) -> dict | None:
    with node.client(decode_responses=True) as admin:
        return admin.acl_getuser(user)


def holders(cluster: LocalCluster, user: str) -> list[int]:
    """The ports of the nodes that hold ``user``."""
    return [node.port for node in cluster.nodes if node.running and acl_user(node, user)]


def dryrun(node: ClusterNode, user: str, command: tuple[str, ...], job: str) -> bool:
    """Whether ``node``'s ACL lets ``user`` run ``command`` (checked, not run)."""
    words = [w.replace("{own}", f"ckpt:{{{job}}}").replace("{other}", "ckpt:{x}") for w in command]
    with node.client(decode_responses=True) as admin:
        return admin.execute_command("ACL", "DRYRUN", user, *words) == "OK"


def sha256(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def node_name(node: ClusterNode) -> str:
    return f"127.0.0.1:{node.port}"


def owner(cluster: LocalCluster, data: RedisCluster, job: str) -> ClusterNode:
    port = data.get_node_from_key(keys.meta(job)).port
    return next(node for node in cluster.nodes if node.port == port)


def sync() -> dict:
    done = cli("acl", "sync")
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_register_puts_the_pod_user_on_every_node_with_its_own_job_s_rights_only(
    cluster, monkeypatch, redis_client, pipeline_env
):
    data = on(cluster, monkeypatch)
    (password, _), user = register("job-a"), pod_username("job-a")
    stream = keys.events("job-a")
    assert len(cluster.nodes) == 6
    for node in cluster.nodes:
        found = acl_user(node, user)
        assert found is not None and found["enabled"], node.port
        assert found["passwords"] == [sha256(password)]
        assert [c for c in ALLOWED if not dryrun(node, user, c, "job-a")] == []
        assert [c for c in REFUSED if dryrun(node, user, c, "job-a")] == []
        # A login with the pod's own password: every node lets the XADD past its ACL, then
        # appends it (the job's master) or redirects it (MOVED) to the job's master.
        with redis.Redis(port=node.port, username=user, password=password) as pod:
            try:
                assert pod.xadd(stream, {"event": "{}"})
            except MovedError as exc:
                assert exc.slot_id == key_slot(stream.encode())
    assert data.xlen(stream) == 1  # appended once, on its master
    assert data.hget(keys.meta("job-a"), "pod_user") == user.encode()
    assert user.encode() not in redis_client.acl_users()  # the data side holds the users


def test_the_pod_s_publisher_finds_the_cluster_and_its_client_may_touch_its_keys_only(
    cluster, monkeypatch, redis_client, pipeline_env, tmp_path
):
    data = on(cluster, monkeypatch)
    _, url = register("job-p")
    publisher = EventPublisher("job-p", url, spool_dir=tmp_path, flush_interval_ms=1)
    for step in range(1, 6):
        publisher.publish(build_event("train_log", "job-p", step, 0.1, {"loss": 1.0}, ts=step))
    publisher.close()
    assert (publisher.sent, publisher.spooled, data.xlen(keys.events("job-p"))) == (5, 0, 5)
    pod = open_redis(url)
    assert isinstance(pod, RedisCluster)  # told by the server, not by the URL
    data.hset(keys.decision("job-p"), "version", "3")
    assert pod.hmget(keys.decision("job-p"), ["version"]) == [b"3"]
    forbidden = {
        "another job's stream": lambda: pod.xadd(keys.events("job-q"), {"event": "{}"}),
        "another job's decision": lambda: pod.hmget(keys.decision("job-q"), ["version"]),
        "reading its stream": lambda: pod.xrange(keys.events("job-p")),
        "deleting its stream": lambda: pod.delete(keys.events("job-p")),
        "the queue side's keys": lambda: pod.lpush("rq:queue:scoring", "x"),
    }
    for what, call in forbidden.items():
        with pytest.raises(NoPermissionError):
            call()
            pytest.fail(what)
    pod.close()


@pytest.mark.parametrize("missing", DISCOVERY)
def test_each_discovery_rule_is_needed_by_the_pod_s_cluster_client(
    cluster, monkeypatch, redis_client, pipeline_env, missing
):
    """The three extra grants are the minimum: without any one, the pod cannot publish."""
    data = on(cluster, monkeypatch)
    job, stream = "job-m", keys.events("job-m")

    def rules(job_id: str, *, cluster: bool) -> list[str]:
        return [r for r in pod_acl_rules(job_id, cluster=cluster) if r != missing]

    install_pod_user(data, job, "pw-m", PodUserPolicy(pod_username, job_of_pod_username, rules))
    url = f"redis://{pod_username(job)}:pw-m@127.0.0.1:{cluster.nodes[0].port}/0"
    if missing != "+asking":  # RedisCluster runs CLUSTER SLOTS and COMMAND as it starts
        with pytest.raises((RedisClusterException, NoPermissionError)):
            RedisCluster.from_url(url).xadd(stream, {"event": "{}"})
        return
    # ASKING: the job's slot migrates to another master, its stream already moved.
    data.xadd(stream, {"event": "{}"})
    source = owner(cluster, data, job)
    target = next(node for node in cluster.nodes[:3] if node is not source)
    slot = key_slot(stream.encode())
    with source.client() as s, target.client() as t:
        t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
        s.execute_command("MIGRATE", "127.0.0.1", target.port, stream, 0, 5000)
    try:
        pod = RedisCluster.from_url(url)
        with pytest.raises(NoPermissionError, match="asking"):
            pod.xadd(stream, {"event": "{}"})
        data.execute_command("ACL", "SETUSER", pod_username(job), "+asking", target_nodes="all")
        assert pod.xadd(stream, {"event": "{}"})  # with it, the ASK redirect is followed
        pod.close()
    finally:
        for node in cluster.nodes[:3]:
            with node.client() as admin:
                admin.execute_command("CLUSTER SETSLOT", slot, "NODE", target.node_id)
    assert data.xlen(stream) == 2


def test_unregister_and_the_pump_s_retirement_delete_the_user_on_every_node(
    cluster, monkeypatch, redis_client, pipeline_env
):
    data = on(cluster, monkeypatch)
    register("job-u")
    register("job-r")
    assert len(holders(cluster, pod_username("job-u"))) == 6
    assert cli("unregister", "job-u").exit_code == 0
    assert holders(cluster, pod_username("job-u")) == []
    assert data.hget(keys.meta("job-u"), "pod_user") is None
    # Finished, drained and written: the pump's pass retires the job.
    data.hset(
        keys.meta("job-r"), mapping={"version": 2, "written_version": 2, "status": "completed"}
    )
    assert cli("pump", "--burst").exit_code == 0
    assert not redis_client.sismember(keys.JOBS, "job-r")
    assert holders(cluster, pod_username("job-r")) == []


def test_a_cut_off_disables_the_user_on_every_node_and_the_sync_keeps_it_off(
    cluster, monkeypatch, redis_client, pipeline_env
):
    data = on(cluster, monkeypatch)
    _, url = register("job-c")
    user = pod_username("job-c")
    pod = RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0))
    assert pod.xadd(keys.events("job-c"), {"event": "{}"})  # connected, on its master
    cut_off_job(data, "job-c", "too many events", user)
    assert [acl_user(node, user)["enabled"] for node in cluster.nodes] == [False] * 6
    with pytest.raises((redis.RedisError, RedisClusterException)):
        pod.xadd(keys.events("job-c"), {"event": "{}"})  # its connection is gone, and its login
    pod.close()
    # A replica that lost the user (restarted without an ACL file) gets it back disabled.
    replica = cluster.nodes[4]
    with replica.client() as admin:
        admin.acl_deluser(user)
    result = sync_pod_users(data, ["job-c"], POLICY)
    assert (result.created, result.disabled, result.deleted) == (
        {node_name(replica): [user]},
        {},
        {},
    )
    assert acl_user(replica, user)["enabled"] is False


def test_remote_launch_creates_the_user_on_every_node_and_a_refused_one_leaves_none(
    cluster, monkeypatch, redis_client, pipeline_env, runpod_api, tmp_path
):
    data = on(cluster, monkeypatch)
    env = runpod_env(runpod_api.url)
    done = cli("remote", "launch", str(write_spec(tmp_path, "job-l")), env=env)
    assert done.exit_code == 0, done.output
    (request,) = runpod_api.requests
    url = request.body["env"]["REDIS_URL"]
    password = redis.connection.parse_url(url)["password"]
    for node in cluster.nodes:
        assert acl_user(node, pod_username("job-l"))["passwords"] == [sha256(password)]
    pod = open_redis(url)
    assert pod.xadd(keys.events("job-l"), {"event": "{}"}) and data.xlen(keys.events("job-l"))
    pod.close()
    runpod_api.script("createPod", 402)
    done = cli("remote", "launch", str(write_spec(tmp_path, "job-n")), env=env)
    assert done.exit_code == 2 and "402" in done.output
    assert holders(cluster, pod_username("job-n")) == []


def test_a_master_that_does_not_answer_fails_the_creation_naming_it_and_leaves_no_user(
    own_cluster, monkeypatch, redis_client, pipeline_env
):
    data = on(own_cluster, monkeypatch)
    register("job-a")
    victim = next(m for m in own_cluster.nodes[1:3] if m is not owner(own_cluster, data, "job-b"))
    victim.kill()
    try:
        done = cli("register", "job-b", "tok", "--pod-credentials")
        assert done.exit_code == 2
        assert f"could not be created on master {node_name(victim)}" in done.output
        assert holders(own_cluster, pod_username("job-b")) == []
        assert data.hget(keys.meta("job-b"), "pod_user") is None
    finally:
        victim.start()  # back as the same master; a restart keeps no ACL user
    wait_until(lambda: all(n.state_ok() for n in own_cluster.nodes), 15, what="the cluster ok")
    assert acl_user(victim, pod_username("job-a")) is None
    assert sync()["created"] == {node_name(victim): [pod_username("job-a")]}
    assert acl_user(victim, pod_username("job-a"))["enabled"]


def test_a_deletion_a_node_misses_is_finished_by_the_sync(
    own_cluster, monkeypatch, redis_client, pipeline_env, caplog
):
    on(own_cluster, monkeypatch)
    register("job-d")
    user = pod_username("job-d")
    quick = RedisCluster(
        host="127.0.0.1", port=own_cluster.nodes[0].port, socket_timeout=1, socket_connect_timeout=1
    )
    victim = next(m for m in own_cluster.nodes[1:3] if m is not owner(own_cluster, quick, "job-d"))
    # Stopped, it keeps its users and answers nothing: a new connection hangs in redis-py's
    # handshake (CLIENT SETINFO) until the timeout, so the deletion never reaches it.
    victim.process.send_signal(signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="scorer_worker.acl"):
            assert drop_pod_user(quick, "job-d")
    finally:
        victim.process.send_signal(signal.SIGCONT)
    assert f"pod user {user} not deleted on {node_name(victim)}" in caplog.text
    assert holders(own_cluster, user) == [victim.port]
    assert sync()["deleted"] == {node_name(victim): [user]}
    assert holders(own_cluster, user) == []
    quick.close()


def test_masters_that_join_later_get_the_users_from_acl_sync_and_from_the_pump(
    own_cluster, monkeypatch, redis_client, pipeline_env
):
    data = on(own_cluster, monkeypatch)
    (password, url), live, cut = register("job-a"), pod_username("job-a"), pod_username("job-c")
    register("job-c")
    cut_off_job(data, "job-c", "flood", cut)
    # A job whose password was not recorded (as before it was): its user is copied from a node.
    old = pod_username("job-o")
    record_pod_user(data, "job-o", old)
    redis_client.sadd(keys.JOBS, "job-o")
    install_pod_user(data, "job-o", "old-password", POLICY)

    joiner = own_cluster.add_master()
    assert [acl_user(joiner, u) for u in (live, cut, old)] == [None] * 3
    assert sync()["created"] == {node_name(joiner): [live, cut, old]}
    assert acl_user(joiner, live)["enabled"] and acl_user(joiner, live)["passwords"] == [
        sha256(password)
    ]
    assert not acl_user(joiner, cut)["enabled"]
    assert acl_user(joiner, old)["passwords"] == [sha256("old-password")]
    # The job's slot moves to the joiner: the pod follows it there, with its own password.
    pod = open_redis(url)
    pod.xadd(keys.events("job-a"), {"event": "{}"})
    move_slot(own_cluster, data, "job-a", joiner)
    pod.xadd(keys.events("job-a"), {"event": "{}"})
    with joiner.client() as admin:
        assert admin.xlen(keys.events("job-a")) == 2
    pod.close()

    second = own_cluster.add_master()
    done = cli("pump", "--burst")  # the pump's pass reconciles too
    assert done.exit_code == 0, done.output
    assert acl_user(second, live)["enabled"] and not acl_user(second, cut)["enabled"]
    assert sync()["created"] == {}  # nothing left to do


def test_on_one_server_acl_sync_restores_a_lost_user_and_deletes_a_stray(
    redis_client, pipeline_env
):
    admin = redis.Redis.from_url(pipeline_env.redis_url, decode_responses=True)
    for leftover in filter(job_of_pod_username, admin.acl_users()):  # earlier tests' users
        admin.acl_deluser(leftover)
    password, url = register("job-one")
    user = pod_username("job-one")
    server = "{host}:{port}".format(**redis.connection.parse_url(pipeline_env.redis_url))
    commands = set(admin.acl_getuser(user)["commands"])
    assert not set(DISCOVERY) & commands  # the plain rules
    pod = open_redis(url)
    assert type(pod) is redis.Redis and pod.xadd(keys.events("job-one"), {"event": "{}"})
    assert type(open_redis(pipeline_env.redis_url)) is redis.Redis  # the default user too
    redis_client.acl_deluser(user)  # as a restart without an ACL file would
    redis_client.execute_command("ACL", "SETUSER", "ckpt-pod-ghost", "on", ">x")
    redis_client.execute_command("ACL", "SETUSER", "operator", "on", ">y", "~*", "+@all")
    try:
        assert (
            sync_pod_users(redis_client, ["job-one"], POLICY, owns=lambda j: False).changed is False
        )
        result = sync()
        assert result["created"] == {server: [user]} and result["deleted"] == {
            server: ["ckpt-pod-ghost"]
        }
        assert admin.acl_getuser("operator") is not None  # not a pod user: untouched
        assert admin.acl_getuser(user)["passwords"] == [sha256(password)]
        assert open_redis(url).xadd(keys.events("job-one"), {"event": "{}"})
        # A live user with no recorded password and no node to copy it from: said, exit 1.
        record_pod_user(redis_client, "job-lost", pod_username("job-lost"))
        redis_client.sadd(keys.JOBS, "job-lost")
        done = cli("acl", "sync")
        assert done.exit_code == 1 and json.loads(done.stdout)["unrecoverable"] == [
            "ckpt-pod-job-lost"
        ]
    finally:
        admin.acl_deluser("operator")
        admin.close()


def move_slot(cluster: LocalCluster, data: RedisCluster, job: str, target: ClusterNode) -> None:
    """Migrate ``job``'s slot, keys included, to ``target`` (as ``redis-cli --cluster reshard``)."""
    source, slot = owner(cluster, data, job), key_slot(keys.meta(job).encode())
    with source.client() as s, target.client() as t:
        t.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source.node_id)
        s.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target.node_id)
        while moving := s.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            s.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moving)
    for node in cluster.masters():
        with node.client() as admin:
            admin.execute_command("CLUSTER SETSLOT", slot, "NODE", target.node_id)
