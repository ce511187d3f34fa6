"""The RunPod path: the rendered pod script only publishes and reads its decision, with per-job
credentials that allow nothing else, and a pod run is scored exactly like a local run."""

from __future__ import annotations

import ast
import base64
import gzip
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import torch
from transformers import PrinterCallback, set_seed

from ckpt_pipeline.demo.model import prepare_overfit_demo
from ckpt_pipeline.runner import run_all_in_one
from producer import CheckpointEventsCallback, EventPublisher
from remote.bootstrap import SCRIPT_ENV
from remote.credentials import create_pod_user, delete_pod_user, pod_acl_rules
from remote.render import PRODUCER_DIR, read_embedded, render_script
from remote.schema import SpecError
from remote.spec import validate_spec
from remote.training import build_trainer
from scorer_worker import keys
from scorer_worker.registry import record_pod_user, register_job
from sink.writers.sqlite import SqliteWriter
from tests.runpod_fake import Answer, FakeRunPod
from tests.runpod_jobs import API_KEY, JOB_TOKEN, cli, runpod_env

REPO = Path(__file__).resolve().parents[1]
COMPARED = (
    "status", "current_step", "current_epoch", "total_steps", "total_epochs", "progress",
    "loss", "eval_loss", "learning_rate", "grad_norm", "perplexity", "train_perplexity",
    "best_eval_loss", "best_epoch", "best_step", "best_checkpoint_score", "best_checkpoint_step",
    "best_checkpoint_epoch", "epochs_without_improvement", "loss_trend", "error_message",
)  # fmt: skip


def short_spec(workdir: Path, job_id: str, **overrides) -> dict:
    spec = {**prepare_overfit_demo(workdir, job_id), "num_train_epochs": 12, "save_total_limit": 3}
    return validate_spec({**spec, **overrides})


def run_pod_script(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REDIS_URL", "JOB_ID")}
    # One torch thread: on a few shared cores the default pool makes each step many times
    # slower. Runs compared with a pod run use one thread too (same float reductions).
    clean["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, str(script)], env={**clean, **env}, cwd=script.parent,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def create_row(settings, job_id: str, token: str, redis_client) -> SqliteWriter:
    writer = SqliteWriter(settings.sink_url.removeprefix("sqlite:///"))
    writer.ensure_schema()
    writer.create_job(job_id, token)
    register_job(redis_client, job_id, token)
    return writer


def test_script_embeds_the_producer_byte_for_byte_and_no_scoring(tmp_path):
    spec = short_spec(tmp_path, "render-job")
    script = render_script(spec)
    embedded_spec, embedded = read_embedded(script)
    assert embedded_spec == spec
    producer_files = sorted(p.name for p in PRODUCER_DIR.glob("*.py"))
    assert (
        sorted(k.split("/", 1)[1] for k in embedded if k.startswith("producer/")) == producer_files
    )
    for key, source in embedded.items():
        assert source.encode() == (REPO / key).read_bytes(), key
    # No scoring code travels: nothing the scoring modules define is defined in the script.
    # (The script does name the scorer: it reads the decision, and follows it by default.)
    scoring = {
        node.name
        for module in ("scoring.py", "ranking.py", "decision.py")
        for node in ast.walk(ast.parse((REPO / "scorer_worker" / module).read_text()))
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }
    defined = {
        node.name
        for node in ast.walk(ast.parse(script))
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }
    assert {"score_eval", "decide"} <= scoring and defined
    assert not scoring & defined
    assert "import pydantic" not in script and "scorer_worker" not in script


def test_bad_specs_name_the_field(tmp_path):
    good = short_spec(tmp_path, "spec-job")
    for field, value, message in [
        ("eval_fraction", 2, "eval_fraction"),
        ("job_id", "bad id!", "job_id"),
        ("learning_rate", "fast", "learning_rate"),
    ]:
        with pytest.raises(SpecError, match=message):
            validate_spec({**good, field: value})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**good, "surprise": 1}))
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", "remote", "render", str(spec_file)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "surprise" in done.stderr


@pytest.mark.slow
def test_pod_run_is_scored_exactly_like_a_local_run(
    tmp_path, redis_client, redis_server, pipeline_env
):
    # The pod: rendered script, subprocess, the per-job credentials. The loop is off: the
    # local run has no scorer to follow while it trains (the loop's own test: test_pod_loop).
    pod_spec = short_spec(tmp_path / "pod", "pod-job", follow_scorer=False)
    script = tmp_path / "pod" / "pod_script.py"
    script.write_text(render_script(pod_spec))
    pod_rows = create_row(pipeline_env, "pod-job", "pod-token", redis_client)
    credentials = create_pod_user(redis_client, "pod-job", redis_server.url)
    record_pod_user(redis_client, "pod-job", credentials.username)
    done = run_pod_script(script, {"REDIS_URL": credentials.redis_url, "JOB_ID": "pod-job"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(REPO) not in done.stdout.split("producer from ", 1)[1].splitlines()[0]

    # The same config and seed, in-process with the callback.
    local_spec = short_spec(tmp_path / "local", "local-job", follow_scorer=False)
    create_row(pipeline_env, "local-job", "local-token", redis_client)
    set_seed(local_spec["seed"])
    publisher = EventPublisher("local-job", redis_server.url, spool_dir=tmp_path / "spool")
    trainer = build_trainer(local_spec, [CheckpointEventsCallback(publisher=publisher)])
    trainer.remove_callback(PrinterCallback)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the pod ran (run_pod_script)
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    publisher.close()

    run_all_in_one(redis_client, pipeline_env, burst=True)
    pod_row, local_row = pod_rows.read_job("pod-job"), pod_rows.read_job("local-job")
    assert pod_row["status"] == "completed"
    assert {c: pod_row[c] for c in COMPARED} == {c: local_row[c] for c in COMPARED}
    pod_best = Path(pod_row["best_checkpoint_path"]).name
    assert pod_best == Path(local_row["best_checkpoint_path"]).name
    listing = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", "checkpoints", pod_spec["output_dir"],
         "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert next(c["name"] for c in json.loads(listing.stdout) if c["is_best"]) == pod_best
    # The job ended and was written: the pump retired it and deleted the pod's user.
    assert not redis_client.sismember(keys.JOBS, "pod-job")
    assert credentials.username not in redis_client.acl_users()


@pytest.mark.slow
def test_a_pod_whose_training_raises_ends_with_a_failed_row(
    tmp_path, redis_client, redis_server, pipeline_env
):
    spec = short_spec(tmp_path, "failing-job", dataset=str(tmp_path / "missing.jsonl"))
    script = tmp_path / "pod_script.py"
    script.write_text(render_script(spec))
    rows = create_row(pipeline_env, "failing-job", "tok", redis_client)
    credentials = create_pod_user(redis_client, "failing-job", redis_server.url)
    done = run_pod_script(script, {"REDIS_URL": credentials.redis_url, "JOB_ID": "failing-job"})
    assert done.returncode == 1
    run_all_in_one(redis_client, pipeline_env, burst=True)
    row = rows.read_job("failing-job")
    assert row["status"] == "failed"
    assert "missing.jsonl" in row["error_message"]


def refused(call) -> bool:
    """True when Redis refuses ``call`` for lack of permission (any other outcome is False)."""
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:  # a MULTI refused inside a pipeline
        return "permission" in str(exc).lower()
    return False


def test_pod_acl_rules_are_what_is_sent():
    assert pod_acl_rules("acl-job") == [
        "reset",
        "on",
        "%W~ckpt:{acl-job}:events",
        "+xadd",
        "(%R~ckpt:{acl-job}:decision +hmget)",
    ]


def test_pod_credentials_can_only_append_to_their_own_stream(redis_client, redis_server):
    credentials = create_pod_user(redis_client, "acl-job", redis_server.url)
    pod = redis.Redis.from_url(credentials.redis_url)
    own = keys.events("acl-job")
    assert pod.xadd(own, {"event": "{}"})
    forbidden = {
        "XADD other job": lambda: pod.xadd(keys.events("other-job"), {"event": "{}"}),
        "XRANGE own": lambda: pod.xrange(own),
        "XREAD own": lambda: pod.xread({own: "0-0"}),
        "XLEN own": lambda: pod.xlen(own),
        "HMGET own stream": lambda: pod.hmget(own, ["event"]),  # HMGET is granted elsewhere
        "XTRIM own": lambda: pod.xtrim(own, maxlen=0),
        "DEL own": lambda: pod.delete(own),
        "rq queue": lambda: pod.lpush("rq:queue:scoring", "x"),
        "rq job": lambda: pod.hgetall("rq:job:x"),
        "ckpt:jobs": lambda: pod.sadd(keys.JOBS, "x"),
        "own dead letters": lambda: pod.xadd(keys.dead("acl-job"), {"x": "y"}),
        "ckpt:dead": lambda: pod.xadd("ckpt:dead", {"x": "y"}),
        "state": lambda: pod.get(keys.state("acl-job")),
        "EVAL": lambda: pod.eval("return 1", 0),
        "CONFIG": lambda: pod.config_get("*"),
        "KEYS": lambda: pod.keys("*"),
        "FLUSHALL": lambda: pod.flushall(),
    }
    assert [name for name, call in forbidden.items() if not refused(call)] == []
    pipe = pod.pipeline(transaction=True)
    pipe.xadd(own, {"event": "{}"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        pipe.execute()
    # MULTI was refused, so the XADD inside it ran as a plain XADD: allowed anyway.
    assert redis_client.xlen(own) == 2
    assert delete_pod_user(redis_client, "acl-job")
    with pytest.raises(redis.exceptions.AuthenticationError):
        pod.xadd(own, {"event": "{}"})


def test_pod_credentials_read_only_their_own_decision_and_only_by_hmget(redis_client, redis_server):
    decision, other = keys.decision("acl-job"), keys.decision("other-job")
    written = {"version": "3", "best_step": "20", "score:10": "0.5,0.9", "score:20": "0.4,0.8"}
    redis_client.hset(decision, mapping=written)
    redis_client.hset(other, mapping={"version": "7", "score:10": "0.1,0.2"})
    redis_client.hset(keys.meta("acl-job"), mapping={"token": "row-token"})
    redis_client.hset("rq:job:x", mapping={"data": "payload"})
    pod = redis.Redis.from_url(create_pod_user(redis_client, "acl-job", redis_server.url).redis_url)

    assert pod.hmget(decision, ["version", "score:20", "score:30"]) == [b"3", b"0.4,0.8", None]
    forbidden = {
        # another job's decision, and the other keys of this job (its meta holds the token)
        "HMGET other job's decision": lambda: pod.hmget(other, ["version"]),
        "HMGET own meta": lambda: pod.hmget(keys.meta("acl-job"), ["token"]),
        "HMGET own state": lambda: pod.hmget(keys.state("acl-job"), ["head"]),
        "HMGET rq job": lambda: pod.hmget("rq:job:x", ["data"]),
        "HMGET other key": lambda: pod.hmget("unrelated", ["x"]),
        # reads other than HMGET
        "HGET own decision": lambda: pod.hget(decision, "version"),
        "HGETALL own decision": lambda: pod.hgetall(decision),
        "HKEYS own decision": lambda: pod.hkeys(decision),
        "HSCAN own decision": lambda: pod.hscan(decision),
        "EXISTS own decision": lambda: pod.exists(decision),
        # writes to the decision
        "HSET own decision": lambda: pod.hset(decision, "best_step", "10"),
        "HSETNX own decision": lambda: pod.hsetnx(decision, "score:30", "0.0,0.0"),
        "HINCRBY own decision": lambda: pod.hincrby(decision, "version", 1),
        "HDEL own decision": lambda: pod.hdel(decision, "score:20"),
        "DEL own decision": lambda: pod.delete(decision),
        "UNLINK own decision": lambda: pod.unlink(decision),
        "EXPIRE own decision": lambda: pod.expire(decision, 1),
        "RENAME own decision": lambda: pod.rename(decision, keys.decision("acl-job-2")),
        "XADD own decision": lambda: pod.xadd(decision, {"event": "{}"}),  # XADD is granted
        "HSET other job's decision": lambda: pod.hset(other, "best_step", "10"),
        # everything else
        "EVAL": lambda: pod.eval("return redis.call('HGET', KEYS[1], 'version')", 1, decision),
        "FCALL": lambda: pod.fcall("f", 1, decision),
        "CONFIG": lambda: pod.config_get("*"),
        "KEYS": lambda: pod.keys("*"),
        "SCAN": lambda: pod.scan(),
        "ACL": lambda: pod.acl_list(),
        "CLIENT": lambda: pod.client_list(),
        "PUBLISH": lambda: pod.publish("channel", "x"),
        "FLUSHALL": lambda: pod.flushall(),
    }
    assert [name for name, call in forbidden.items() if not refused(call)] == []
    pipe = pod.pipeline(transaction=True)
    pipe.hmget(decision, ["version"])
    assert refused(pipe.execute)  # MULTI
    # Nothing the pod tried changed a key.
    assert redis_client.hgetall(decision) == {k.encode(): v.encode() for k, v in written.items()}
    assert redis_client.ttl(decision) == -1 and redis_client.type(decision) == b"hash"
    assert redis_client.hgetall(other) == {b"version": b"7", b"score:10": b"0.1,0.2"}
    assert not redis_client.exists(keys.decision("acl-job-2"), "ckpt:{acl-job}:events")


def test_register_creates_the_same_pod_user(redis_client, pipeline_env):
    done = subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", "register", "reg-job", "tok",
         "--pod-credentials"],
        capture_output=True, text=True, check=True, env=os.environ, timeout=60,
    )  # fmt: skip
    pod = redis.Redis.from_url(json.loads(done.stdout)["redis_url"])
    redis_client.hset(keys.decision("reg-job"), "version", "1")
    redis_client.hset(keys.decision("another-job"), "version", "1")
    assert pod.xadd(keys.events("reg-job"), {"event": "{}"})
    assert pod.hmget(keys.decision("reg-job"), ["version"]) == [b"1"]
    assert refused(lambda: pod.hset(keys.decision("reg-job"), "version", "2"))
    assert refused(lambda: pod.hmget(keys.decision("another-job"), ["version"]))
    assert refused(lambda: pod.hmget(keys.events("reg-job"), ["event"]))


@pytest.fixture
def runpod_api():
    """A RunPod v2 server built from RunPod's OpenAPI document (tests/runpod_fake.py)."""
    server = FakeRunPod().start()
    yield server
    server.stop()
    assert server.answer_errors == []


def launch_cli(tmp_path, spec: dict, env: dict, *extra: str):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    return cli("remote", "launch", str(spec_file), *extra, env=env)


def tiny_spec(job_id: str, **fields) -> dict:
    return {
        "job_id": job_id,
        "model": "tiny",
        "dataset": "data.jsonl",
        "output_dir": "out",
        **fields,
    }


def test_launch_sends_a_v2_create_pod_request_and_registers_the_pod(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    spec = tiny_spec("launch-job", on_end="terminate")
    done = launch_cli(tmp_path, spec, runpod_env(runpod_api.url), "--gpu-type", "NVIDIA A40")
    assert done.exit_code == 0, done.output
    (request,) = runpod_api.requests
    assert (request.operation, request.path, request.errors) == ("createPod", "/v2/pods", [])
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    body = request.body
    assert body["gpu"] == {"id": "NVIDIA A40", "count": 1}
    assert body["mounts"] == {"persistent": {"size": 50, "path": "/workspace"}}
    env_vars = body["env"]
    assert env_vars["JOB_ID"] == "launch-job"
    script = gzip.decompress(base64.b64decode(env_vars[SCRIPT_ENV])).decode()
    training_spec = validate_spec({k: v for k, v in spec.items() if k != "on_end"})
    assert script == render_script(training_spec)  # on_end stays on the trusted side
    assert shlex.split(body["args"])[:2] == ["sh", "-c"]
    pod = redis.Redis.from_url(env_vars["REDIS_URL"])
    assert pod.xadd(keys.events("launch-job"), {"event": "{}"})  # the credentials work ...
    with pytest.raises(redis.exceptions.NoPermissionError):
        pod.xadd(keys.events("another-job"), {"event": "{}"})  # ... for this job only
    redis_client.hset(keys.decision("launch-job"), "version", "1")
    redis_client.hset(keys.decision("another-job"), "version", "1")
    assert pod.hmget(keys.decision("launch-job"), ["version"]) == [b"1"]  # reads its decision
    assert refused(lambda: pod.hset(keys.decision("launch-job"), "version", "2"))
    assert refused(lambda: pod.hmget(keys.decision("another-job"), ["version"]))
    assert refused(lambda: pod.hmget(keys.meta("launch-job"), ["runpod_pod_id"]))
    assert redis_client.sismember(keys.JOBS, "launch-job")
    (pod_id,) = runpod_api.pods
    meta = {
        k.decode(): v.decode() for k, v in redis_client.hgetall(keys.meta("launch-job")).items()
    }
    assert meta["runpod_pod_id"] == pod_id and meta["runpod_on_end"] == "terminate"
    assert meta["runpod_api_url"] == runpod_api.url and meta["runpod_gpu_type"] == "NVIDIA A40"
    assert redis_client.sismember("ckpt:pods", "launch-job")
    assert json.loads(done.output) == {"pod_id": pod_id, "status": "PROVISIONING"}
    assert API_KEY not in done.output and JOB_TOKEN not in done.output


def test_launch_dry_run_masks_secrets_and_sends_nothing(tmp_path, pipeline_env, runpod_api):
    admin_url = pipeline_env.redis_url.replace("127.0.0.1", "admin:adminpw@127.0.0.1")
    env = {**runpod_env(runpod_api.url), "REDIS_URL": admin_url}
    done = launch_cli(
        tmp_path, tiny_spec("dry-job"), env, "--dry-run", "--gpu-type", "A", "--gpu-type", "B"
    )
    assert done.exit_code == 0, done.output
    assert runpod_api.requests == []
    printed = json.loads(done.output)
    assert printed["method"] == "POST" and printed["url"] == f"{runpod_api.url}/pods"
    assert printed["headers"]["Authorization"] == "Bearer ***"
    assert ":***@" in printed["json"]["env"]["REDIS_URL"]
    assert printed["fallback_gpu_types"] == ["B"]
    assert runpod_api.contract.schema_errors("CreatePodRequest", printed["json"]) == []
    assert API_KEY not in done.output and "adminpw" not in done.output


def test_a_refused_launch_leaves_no_pod_credentials_and_shows_no_secret(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    echo = "refused {body} sent with {authorization}"  # a RunPod that echoes the request
    runpod_api.script("createPod", Answer(400, detail=echo), Answer(400, detail=echo))
    done = launch_cli(
        tmp_path, tiny_spec("refused-job"), runpod_env(runpod_api.url),
        "--gpu-type", "A", "--gpu-type", "B",
    )  # fmt: skip
    assert done.exit_code == 2 and "RunPod placed none of the GPU types" in done.output
    assert "A: 400 Bad Request: refused" in done.output  # the problem's title and detail ...
    (sent, _) = runpod_api.calls("createPod")
    password = redis.connection.parse_url(sent.body["env"]["REDIS_URL"])["password"]
    assert password not in done.output and API_KEY not in done.output  # ... without secrets
    assert "ckpt-pod-refused-job" not in redis_client.acl_users()
    assert redis_client.hget(keys.meta("refused-job"), "runpod_pod_id") is None
    assert not redis_client.sismember("ckpt:pods", "refused-job")


def test_launch_refuses_an_output_dir_off_the_volume(tmp_path, pipeline_env, runpod_api):
    spec = tiny_spec("off-volume-job", output_dir="/tmp/checkpoints")
    done = launch_cli(tmp_path, spec, runpod_env(runpod_api.url))
    assert done.exit_code == 2 and "not on the pod's volume (/workspace)" in done.output
    assert runpod_api.requests == []
    ok = launch_cli(tmp_path, {**spec, "output_dir": "/workspace/run"}, runpod_env(runpod_api.url))
    assert ok.exit_code == 0, ok.output
