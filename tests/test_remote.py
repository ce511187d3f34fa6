"""The RunPod path: the rendered pod script only publishes, with publish-only credentials, and
a pod run is scored exactly like a local run."""

from __future__ import annotations

import ast
import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from transformers import PrinterCallback, set_seed

from producer import CheckpointEventsCallback, EventPublisher
from remote.credentials import create_pod_user, delete_pod_user
from remote.render import PRODUCER_DIR, read_embedded, render_script
from remote.tiny import prepare_overfit_demo
from remote.training import SpecError, build_trainer, validate_spec
from scorer_worker import keys
from scorer_worker.registry import record_pod_user, register_job
from scorer_worker.runner import run_all_in_one
from sink.writers.sqlite import SqliteWriter

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
    names = {
        getattr(node, "name", None) or getattr(node, "id", None) or getattr(node, "attr", "")
        for node in ast.walk(ast.parse(script))
    }
    assert not [n for n in names if n and "score" in n.lower()]  # no scoring code travels
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
        [sys.executable, "-m", "scorer_worker.cli", "remote", "render", str(spec_file)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2 and "surprise" in done.stderr


@pytest.mark.slow
def test_pod_run_is_scored_exactly_like_a_local_run(
    tmp_path, redis_client, redis_server, pipeline_env
):
    # The pod: rendered script, subprocess, publish-only credentials.
    pod_spec = short_spec(tmp_path / "pod", "pod-job")
    script = tmp_path / "pod" / "pod_script.py"
    script.write_text(render_script(pod_spec))
    pod_rows = create_row(pipeline_env, "pod-job", "pod-token", redis_client)
    credentials = create_pod_user(redis_client, "pod-job", redis_server.url)
    record_pod_user(redis_client, "pod-job", credentials.username)
    done = run_pod_script(script, {"REDIS_URL": credentials.redis_url, "JOB_ID": "pod-job"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(REPO) not in done.stdout.split("producer from ", 1)[1].splitlines()[0]

    # The same config and seed, in-process with the callback.
    local_spec = short_spec(tmp_path / "local", "local-job")
    create_row(pipeline_env, "local-job", "local-token", redis_client)
    set_seed(local_spec["seed"])
    publisher = EventPublisher("local-job", redis_server.url, spool_dir=tmp_path / "spool")
    trainer = build_trainer(local_spec, [CheckpointEventsCallback(publisher=publisher)])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    publisher.close()

    run_all_in_one(redis_client, pipeline_env, burst=True)
    pod_row, local_row = pod_rows.read_job("pod-job"), pod_rows.read_job("local-job")
    assert pod_row["status"] == "completed"
    assert {c: pod_row[c] for c in COMPARED} == {c: local_row[c] for c in COMPARED}
    pod_best = Path(pod_row["best_checkpoint_path"]).name
    assert pod_best == Path(local_row["best_checkpoint_path"]).name
    listing = subprocess.run(
        [sys.executable, "-m", "scorer_worker.cli", "checkpoints", pod_spec["output_dir"],
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
        "rq queue": lambda: pod.lpush("rq:queue:scoring", "x"),
        "rq job": lambda: pod.hgetall("rq:job:x"),
        "ckpt:jobs": lambda: pod.sadd(keys.JOBS, "x"),
        "ckpt:dead": lambda: pod.xadd(keys.DEAD, {"x": "y"}),
        "state": lambda: pod.get(keys.state("acl-job")),
        "EVAL": lambda: pod.eval("return 1", 0),
        "CONFIG": lambda: pod.config_get("*"),
        "KEYS": lambda: pod.keys("*"),
        "FLUSHALL": lambda: pod.flushall(),
    }
    for name, call in forbidden.items():
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
        assert name
    pipe = pod.pipeline(transaction=True)
    pipe.xadd(own, {"event": "{}"})
    with pytest.raises(redis.exceptions.NoPermissionError):
        pipe.execute()
    # MULTI was refused, so the XADD inside it ran as a plain XADD: allowed anyway.
    assert redis_client.xlen(own) == 2
    assert delete_pod_user(redis_client, "acl-job")
    with pytest.raises(redis.exceptions.AuthenticationError):
        pod.xadd(own, {"event": "{}"})


class Recorder(BaseHTTPRequestHandler):
    """Records each request and answers like RunPod's create-pod endpoint."""

    requests: list[dict] = []
    status = 201

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.requests.append(
            {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
        )
        answer = json.dumps({"id": "pod-abc", "desiredStatus": "RUNNING"}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def runpod_api():
    Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1"
    server.shutdown()


def launch_cli(tmp_path, spec, env, *extra):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    return subprocess.run(
        [sys.executable, "-m", "scorer_worker.cli", "remote", "launch", str(spec_file), *extra],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=60,
    )  # fmt: skip


def test_launch_sends_the_runpod_request_and_registers_the_pod(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    spec = short_spec(tmp_path, "launch-job")
    env = {
        "RUNPOD_API_KEY": "rp-secret-key",
        "RUNPOD_API_URL": runpod_api,
        "JOB_TOKEN": "row-token",
    }
    done = launch_cli(tmp_path, spec, env, "--gpu-type", "NVIDIA A40")
    assert done.returncode == 0, done.stderr
    (request,) = Recorder.requests
    assert request["path"] == "/v1/pods"
    assert request["headers"]["Authorization"] == "Bearer rp-secret-key"
    body = request["json"]
    assert body["gpuTypeIds"] == ["NVIDIA A40"] and body["imageName"]
    env_vars = body["env"]
    assert env_vars["JOB_ID"] == "launch-job"
    script = base64.b64decode(env_vars["CKPT_SCRIPT_B64"]).decode()
    assert script == render_script(spec)
    assert (
        "base64 -d" in " ".join(body["dockerStartCmd"])
        and "CKPT_SCRIPT_B64" in body["dockerStartCmd"][-1]
    )
    pod = redis.Redis.from_url(env_vars["REDIS_URL"])
    assert pod.xadd(keys.events("launch-job"), {"event": "{}"})  # the credentials work ...
    with pytest.raises(redis.exceptions.NoPermissionError):
        pod.xadd(keys.events("another-job"), {"event": "{}"})  # ... for this job only
    assert redis_client.sismember(keys.JOBS, "launch-job")
    assert "rp-secret-key" not in done.stdout and "row-token" not in done.stdout


def test_launch_dry_run_masks_secrets_and_sends_nothing(
    tmp_path, pipeline_env, runpod_api, monkeypatch
):
    spec = short_spec(tmp_path, "dry-job")
    admin_url = pipeline_env.redis_url.replace("127.0.0.1", "admin:adminpw@127.0.0.1")
    env = {"RUNPOD_API_KEY": "rp-secret-key", "RUNPOD_API_URL": runpod_api, "REDIS_URL": admin_url}
    done = launch_cli(tmp_path, spec, env, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert Recorder.requests == []
    printed = json.loads(done.stdout)
    assert printed["headers"]["Authorization"] == "Bearer ***"
    assert ":***@" in printed["json"]["env"]["REDIS_URL"]
    assert "rp-secret-key" not in done.stdout and "adminpw" not in done.stdout


def test_a_refused_launch_leaves_no_pod_credentials(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    Recorder.status = 400
    try:
        spec = short_spec(tmp_path, "refused-job")
        env = {"RUNPOD_API_KEY": "k", "RUNPOD_API_URL": runpod_api, "JOB_TOKEN": "t"}
        done = launch_cli(tmp_path, spec, env)
    finally:
        Recorder.status = 201
    assert done.returncode == 2 and "400" in done.stderr
    assert "ckpt-pod-refused-job" not in redis_client.acl_users()
