"""RunPod REST v2 on the trusted side, against a server built from RunPod's OpenAPI document:
the create bodies, the create table's refusals, the bootstrap, and the pod's life to on_end."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from ckpt_pipeline.remote_commands import launch as launch_command
from ckpt_pipeline.runner import run_all_in_one
from remote import bootstrap
from remote import pod_record as rec
from remote.launch import LaunchError, LaunchOptions, create_pod_body, launch_pod
from remote.lifecycle import LifecycleConfig, PodLifecycle
from remote.operator import stop_by_hand
from remote.render import read_embedded, render_script
from remote.runpod import RetryPolicy, RunPodClient
from remote.spec import validate_spec
from scorer_worker import keys
from tests.runpod_fake import SHARED_DOCUMENT, Answer, FakeRunPod
from tests.runpod_jobs import API_KEY, PodEvents, cli, create_row, runpod_env, write_spec

POD_URL = "redis://ckpt-pod-j1:pod-password-0123456789@redis.example.com:6379/0"


@pytest.fixture
def runpod_api():
    server = FakeRunPod().start()
    yield server
    server.stop()
    assert server.answer_errors == []  # the fake's own answers kept to the contract


def client_for(server: FakeRunPod, sleeps: list[float] | None = None, **kwargs) -> RunPodClient:
    return RunPodClient(server.url, API_KEY, sleep=(sleeps if sleeps is not None else []).append,
                        **kwargs)  # fmt: skip


def body_for(options: LaunchOptions | None = None, script: str = "print('hi')\n"):
    options = options or LaunchOptions()
    return lambda gpu_type: create_pod_body("j1", script, POD_URL, options, gpu_type)


# -- the contract --------------------------------------------------------------------------


def test_the_vendored_document_is_runpods():
    if not SHARED_DOCUMENT.exists():
        pytest.skip("no shared/runpod/openapi-v2.json beside this clone")
    vendored = Path(__file__).with_name("runpod") / "openapi-v2.json"
    assert vendored.read_bytes() == SHARED_DOCUMENT.read_bytes()


def test_every_body_the_launch_can_build_is_a_valid_create_pod_request(runpod_api):
    contract = runpod_api.contract
    clouds = next(p for p in launch_command.params if p.name == "cloud").type.choices
    assert sorted(clouds) == sorted(contract.enum("Cloud"))  # the CLI offers what RunPod has
    combinations = itertools.product(
        clouds,
        (1, 8),  # gpu_count
        ({}, {"volume_gb": 10}, {"network_volume_id": "vol_xyz"}),
        ((), ("US-TX-3", "EU-RO-1")),  # data centers
        ("/workspace", "/runpod-volume"),
        ("NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"),
    )
    count = 0
    for cloud, gpus, volume, centers, path, gpu_type in combinations:
        options = LaunchOptions(
            cloud=cloud, gpu_count=gpus, data_centers=centers, volume_path=path, **volume
        )
        body = body_for(options)(gpu_type)
        assert contract.schema_errors("CreatePodRequest", body) == [], body
        count += 1
    assert count == 2 * 2 * 3 * 2 * 2 * 2
    for action in rec.ON_END_ACTIONS:
        errors = contract.schema_errors("PodActionRequest", {"action": action})
        assert (errors == []) == (action != "keep")  # keep is never sent: it does nothing


@pytest.mark.parametrize(
    "v1_field, v2_field, value",
    [
        ("imageName", "image", None),
        ("gpuTypeIds", "gpu", ["NVIDIA GeForce RTX 4090"]),
        ("containerDiskInGb", "disk", None),
        ("dockerStartCmd", "args", ["bash", "-c", "true"]),
    ],
)
def test_a_v1_field_name_fails_validation(runpod_api, v1_field, v2_field, value):
    body = body_for()("NVIDIA GeForce RTX 4090")
    body[v1_field] = body.pop(v2_field) if value is None else value
    errors = runpod_api.contract.schema_errors("CreatePodRequest", body)
    assert any(v1_field in error for error in errors), errors


# -- the create table ----------------------------------------------------------------------


@pytest.mark.parametrize("refusal", [400, 403])
def test_a_refused_placement_moves_to_the_next_gpu_type(runpod_api, refusal):
    runpod_api.script("createPod", refusal)
    pod, gpu_type = launch_pod(client_for(runpod_api), body_for(), ("GPU A", "GPU B"))
    assert gpu_type == "GPU B" and pod["gpu"]["id"] == "GPU B"
    sent = [r.body["gpu"]["id"] for r in runpod_api.calls("createPod")]
    assert sent == ["GPU A", "GPU B"] and runpod_api.invalid() == []
    assert list(runpod_api.pods) == [pod["id"]]


def test_429_waits_retry_after_then_retries_the_same_gpu(runpod_api):
    runpod_api.script("createPod", Answer(429, retry_after_s=7))
    sleeps: list[float] = []
    _, gpu_type = launch_pod(client_for(runpod_api, sleeps), body_for(), ("GPU A", "GPU B"))
    assert gpu_type == "GPU A" and sleeps == [7.0]
    assert [r.status for r in runpod_api.calls("createPod")] == [429, 201]


def test_5xx_is_retried_with_backoff_on_the_same_gpu(runpod_api):
    runpod_api.script("createPod", 500, 502, 503)
    sleeps: list[float] = []
    _, gpu_type = launch_pod(client_for(runpod_api, sleeps), body_for(), ("GPU A", "GPU B"))
    assert gpu_type == "GPU A" and sleeps == [1.0, 2.0, 4.0]  # doubling
    assert [r.body["gpu"]["id"] for r in runpod_api.calls("createPod")] == ["GPU A"] * 4


def test_5xx_retries_end_with_an_error(runpod_api):
    runpod_api.script("createPod", *[503] * 3)
    client = client_for(runpod_api, retry=RetryPolicy(attempts=3))
    with pytest.raises(LaunchError, match=r"503 Service Unavailable.*Gave up after retries"):
        launch_pod(client, body_for(), ("GPU A", "GPU B"))
    assert len(runpod_api.calls("createPod")) == 3 and runpod_api.pods == {}


def test_402_stops_without_trying_another_gpu(runpod_api):
    runpod_api.script("createPod", 402)
    with pytest.raises(LaunchError, match=r"402 Payment Required.*Insufficient balance"):
        launch_pod(client_for(runpod_api), body_for(), ("GPU A", "GPU B"))
    assert len(runpod_api.calls("createPod")) == 1


def test_422_shows_the_errors_the_contract_finds(runpod_api):
    def v1_body(gpu_type: str) -> dict:
        body = body_for()(gpu_type)
        body["imageName"] = body.pop("image")
        return body

    with pytest.raises(LaunchError) as refused:
        launch_pod(client_for(runpod_api), v1_body, ("GPU A", "GPU B"))
    message = str(refused.value)
    assert "422 Unprocessable Entity" in message and "a bug in ckpt-pipeline" in message
    assert "'imageName' was unexpected" in message and "'image' is a required property" in message
    assert len(runpod_api.calls("createPod")) == 1  # never retried, no other GPU


def test_every_gpu_refused_lists_each_refusal(runpod_api):
    runpod_api.script("createPod", Answer(400, detail="no capacity"), 403)
    with pytest.raises(LaunchError) as refused:
        launch_pod(client_for(runpod_api), body_for(), ("GPU A", "GPU B"))
    assert "GPU A: 400 Bad Request: no capacity" in str(refused.value)
    assert "GPU B: 403 Forbidden: access denied" in str(refused.value)


def test_a_lost_answer_does_not_create_a_second_pod(runpod_api):
    runpod_api.script("createPod", Answer(drop=True))  # created, then the connection drops
    pod, _ = launch_pod(client_for(runpod_api), body_for(), ("GPU A",))
    assert list(runpod_api.pods) == [pod["id"]]
    assert [r.operation for r in runpod_api.requests] == ["createPod", "listPods"]


def test_errors_never_show_the_api_key_or_a_password(runpod_api):
    echo = "you sent {body} with {authorization}"  # a server that echoes the request back
    runpod_api.script("createPod", Answer(400, detail=echo), Answer(422, detail=echo))
    client = RunPodClient(runpod_api.url, API_KEY, secrets=["pod-password-0123456789"])
    with pytest.raises(LaunchError) as refused:
        launch_pod(client, body_for(), ("GPU A", "GPU B"))
    message = str(refused.value)
    assert "redis://ckpt-pod-j1:***@redis.example.com" in message  # the echo was there ...
    assert API_KEY not in message and "pod-password" not in message  # ... masked


# -- the bootstrap -------------------------------------------------------------------------

FAKE_PIP = """#!{python}
import json, sys
args = sys.argv[1:]
record = {{"args": args}}
if "--constraint" in args:
    record["constraints"] = open(args[args.index("--constraint") + 1]).read()
with open({log!r}, "a") as log:
    log.write(json.dumps(record) + "\\n")
"""
ENTRYPOINT = (
    '#!/bin/sh\n# an image entrypoint: set up, then run the command it was given\nexec "$@"\n'
)


def container(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder with the fake pip (it logs what it is asked) and python3; its log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir()
    pip = bin_dir / "pip"
    pip.write_text(FAKE_PIP.format(python=sys.executable, log=str(log)))
    pip.chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)
    return bin_dir, log


def container_command(args: str, env: dict, bin_dir: Path, entrypoint: Path | None):
    """Split ``args`` into words as RunPod does (shlex) into the container's command: after
    the image's entrypoint under /bin/sh, or as the program itself. Returns it with the
    container's environment: the image's own (PATH, HOME, TMPDIR) plus RunPod's ``env``."""
    words = shlex.split(args)
    command = ["/bin/sh", str(entrypoint), *words] if entrypoint else words
    (tmp := bin_dir.parent / "container-tmp").mkdir(exist_ok=True)
    image_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp)}
    return command, {**image_env, **env}


def run_like_runpod(args: str, env: dict, bin_dir: Path, entrypoint: Path | None, cwd: Path):
    """Run ``args`` with ``env`` as the container would (see :func:`container_command`)."""
    command, full_env = container_command(args, env, bin_dir, entrypoint)
    return subprocess.run(
        command, env=full_env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def pip_calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def meant_pip_call() -> dict:
    return {
        "args": [
            "install", "--quiet", "--no-input",
            "--constraint", f"{bootstrap.STATE_DIR}/constraints.txt",
            *(f"{name}=={version(name)}" for name in bootstrap.POD_PACKAGES),
        ],
        "constraints": f"torch=={version('torch')}\n",
    }  # fmt: skip


def test_the_launched_args_and_env_start_the_launched_script(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    # The real launch and its rendered script, run as the container runs them.
    volume = tmp_path / "volume"
    volume.mkdir()
    spec_file = write_spec(tmp_path, "boot-job")
    done = cli("remote", "launch", str(spec_file), "--volume-path", str(volume),
               env=runpod_env(runpod_api.url))  # fmt: skip
    assert done.exit_code == 0, done.output
    rendered = render_script(validate_spec(json.loads(spec_file.read_text())))
    (create,) = runpod_api.calls("createPod")
    bin_dir, log = container(tmp_path)
    entrypoint = tmp_path / "entrypoint.sh"
    entrypoint.write_text(ENTRYPOINT)
    command, env = container_command(create.body["args"], create.body["env"], bin_dir, entrypoint)
    tmp = Path(env["TMPDIR"])

    # The script starts by writing its embedded modules to a fresh folder, then imports
    # torch and transformers (seconds): seeing the folder filled is seeing python run it.
    pod = subprocess.Popen(command, env=env, cwd=volume, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        started = wait_for(lambda: list(tmp.glob("ckpt-pod-*/remote/pod_main.py")), pod)
        time.sleep(0.2)  # the last file's write
    finally:
        os.killpg(pod.pid, signal.SIGKILL)
        pod.wait()
    assert started, pod.stderr.read().decode()[-2000:]

    assert pip_calls(log) == [meant_pip_call()]  # installed exactly what was meant, once
    decoded = (volume / bootstrap.STATE_DIR / "pod.py").read_text(encoding="utf-8")
    assert decoded == rendered
    root = started[0].parents[1]
    for name, source in read_embedded(decoded)[1].items():
        assert (root / name).read_text(encoding="utf-8") == source, name


def wait_for(found, process: subprocess.Popen, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if result := found():
            return result
        time.sleep(0.05)
    return found()


def test_the_args_work_without_an_entrypoint_too(tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    script = "import os, sys\nprint('started', os.environ['JOB_ID'], os.getcwd())\n"
    body = body_for(LaunchOptions(volume_path=str(volume)), script)("GPU A")
    bin_dir, log = container(tmp_path)
    ran = run_like_runpod(body["args"], body["env"], bin_dir, None, tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == f"started j1 {volume}\n"  # in the volume, the script's own output
    assert (volume / bootstrap.STATE_DIR / "pod.py").read_text() == script
    assert pip_calls(log) == [meant_pip_call()]


def test_the_harness_catches_a_start_command_without_a_shell(tmp_path):
    # v1's start command as one string: with no shell, pip is asked for "&&", "printf", ...
    naive = f'pip install redis && printf %s "${bootstrap.SCRIPT_ENV}" | base64 -d > x.py'
    bin_dir, log = container(tmp_path)
    run_like_runpod(naive, {}, bin_dir, None, tmp_path)
    (call,) = pip_calls(log)
    assert "&&" in call["args"] and call != meant_pip_call()


def test_a_script_too_big_for_one_environment_string_is_refused():
    noise = base64.b64encode(random.Random(0).randbytes(120_000)).decode()  # incompressible
    with pytest.raises(ValueError, match="over the"):
        bootstrap.encode_script(noise)
    small = "print('x')\n" * 1000
    assert gzip.decompress(base64.b64decode(bootstrap.encode_script(small))).decode() == small


# -- the pod's life --------------------------------------------------------------------------


def launch(tmp_path, server: FakeRunPod, job_id: str, **spec_fields) -> dict:
    """Launch ``job_id`` through the command line; return RunPod's created pod."""
    spec_file = write_spec(tmp_path, job_id, **spec_fields)
    done = cli("remote", "launch", str(spec_file), "--gpu-type", "GPU A", "--gpu-type", "GPU B",
               env=runpod_env(server.url))  # fmt: skip
    assert done.exit_code == 0, done.output
    assert API_KEY not in done.output and "ckpt-pod-" not in done.output
    printed = json.loads(done.output)
    assert set(printed) == {"pod_id", "status"}  # RunPod's answer echoes REDIS_URL: not shown
    return server.pods[printed["pod_id"]]


def pump_pass(server: FakeRunPod) -> None:
    """One pass of the trusted pump, with its RunPod hook, as ``ckpt-pipeline pump --burst``."""
    done = cli("pump", "--burst", env=runpod_env(server.url))
    assert done.exit_code == 0, done.output


def remote_status(server: FakeRunPod, job_id: str) -> dict:
    done = cli("remote", "status", job_id, "--json", env=runpod_env(server.url))
    assert done.exit_code == 0, done.output
    assert API_KEY not in done.output and "REDIS_URL" not in done.output
    return json.loads(done.output)


def test_a_launched_job_runs_to_the_stop_action(tmp_path, redis_client, pipeline_env, runpod_api):
    rows = create_row(pipeline_env, "life-job")
    pod = launch(tmp_path, runpod_api, "life-job")
    assert redis_client.hget(keys.meta("life-job"), rec.POD_ID).decode() == pod["id"]
    assert rec.meta_key("life-job") == keys.meta("life-job")
    runpod_api.set_status(pod["id"], "RUNNING")

    events = PodEvents(pod["env"])  # the pod publishes with the credentials it was given
    events.run(end=None)
    run_all_in_one(redis_client, pipeline_env, burst=True)
    pump_pass(runpod_api)
    status = remote_status(runpod_api, "life-job")
    assert status["pod_id"] == pod["id"] and status["runpod"]["status"] == "RUNNING"
    assert status["row_status"] == "running"
    assert status["on_end"]["action"] == "stop"
    assert status["on_end"]["state"] == "waiting for the job's end to be written"
    assert runpod_api.calls("podAction") == []

    events.send("train_end", 20, info={"status": "completed"})
    pump_pass(runpod_api)  # scored but not yet written: still no action
    assert runpod_api.calls("podAction") == []
    run_all_in_one(redis_client, pipeline_env, burst=True)
    assert rows.read_job("life-job")["status"] == "completed"
    pump_pass(runpod_api)

    (action,) = runpod_api.calls("podAction")
    assert action.body == {"action": "stop"} and action.path == f"/v2/pods/{pod['id']}/action"
    assert runpod_api.pods[pod["id"]]["status"] == "EXITED"  # stopped: the volume stays
    status = remote_status(runpod_api, "life-job")
    assert status["runpod"]["status"] == "EXITED" and status["row_status"] == "completed"
    assert status["on_end"]["state"] == "done" and status["on_end"]["result"] == "stopped"
    assert not redis_client.sismember(rec.PODS_KEY, "life-job")
    pump_pass(runpod_api)
    assert len(runpod_api.calls("podAction")) == 1  # applied once
    assert runpod_api.invalid() == []
    assert {r.operation for r in runpod_api.requests} == {"createPod", "getPod", "podAction"}


@pytest.mark.parametrize("on_end", ["terminate", "keep"])
def test_on_end_terminate_and_keep(tmp_path, redis_client, pipeline_env, runpod_api, on_end):
    create_row(pipeline_env, "end-job")
    pod = launch(tmp_path, runpod_api, "end-job", on_end=on_end)
    runpod_api.set_status(pod["id"], "RUNNING")
    PodEvents(pod["env"]).run()
    run_all_in_one(redis_client, pipeline_env, burst=True)
    pump_pass(runpod_api)
    sent = [r.body for r in runpod_api.calls("podAction")]
    assert sent == ([{"action": "terminate"}] if on_end == "terminate" else [])
    assert (pod["id"] in runpod_api.pods) == (on_end == "keep")
    on_end_state = remote_status(runpod_api, "end-job")["on_end"]
    assert on_end_state["state"] == "done"
    assert (
        on_end_state["result"]
        == {"terminate": "terminated", "keep": "kept (on_end is keep)"}[on_end]
    )


def test_a_pod_that_dies_mid_run_ends_the_row_failed(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    rows = create_row(pipeline_env, "dead-job")
    pod = launch(tmp_path, runpod_api, "dead-job")
    runpod_api.set_status(pod["id"], "RUNNING")
    PodEvents(pod["env"]).run(end=None)
    run_all_in_one(redis_client, pipeline_env, burst=True)
    runpod_api.set_status(pod["id"], "EXITED")  # e.g. out of memory: no train_end was sent

    pump_pass(runpod_api)  # sees EXITED: publishes the job's train_end (trusted credentials)
    run_all_in_one(redis_client, pipeline_env, burst=True)
    row = rows.read_job("dead-job")
    assert row["status"] == "failed"
    assert f"RunPod reports the pod {pod['id']} EXITED before the job ended" in row["error_message"]
    pump_pass(runpod_api)  # then on_end: already stopped
    assert remote_status(runpod_api, "dead-job")["on_end"]["result"] == "already EXITED"
    assert not redis_client.sismember(rec.PODS_KEY, "dead-job")


def test_a_pod_that_exits_after_its_own_train_end_completes(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    rows = create_row(pipeline_env, "done-job")
    pod = launch(tmp_path, runpod_api, "done-job")
    PodEvents(pod["env"]).run()  # train_end sent, then the container exits ...
    runpod_api.set_status(pod["id"], "EXITED")
    pump_pass(runpod_api)  # ... before the scorer folded it: not a failure
    run_all_in_one(redis_client, pipeline_env, burst=True)
    assert rows.read_job("done-job")["status"] == "completed"
    assert redis_client.hget(keys.meta("done-job"), rec.FAILURE_REPORTED) is None


def test_on_end_is_retried_with_backoff_until_runpod_accepts(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    create_row(pipeline_env, "retry-job")
    pod = launch(tmp_path, runpod_api, "retry-job")
    runpod_api.set_status(pod["id"], "RUNNING")
    PodEvents(pod["env"]).run()
    run_all_in_one(redis_client, pipeline_env, burst=True)
    runpod_api.script("podAction", 500, Answer(429, retry_after_s=1))
    now = [1000.0]
    config = LifecycleConfig.from_env({"RUNPOD_API_KEY": API_KEY, "CKPT_RUNPOD_POLL_S": "0"})

    def hook() -> PodLifecycle:  # a fresh one each time: a restarted pump, state in Redis
        return PodLifecycle(redis_client, config, clock=lambda: now[0])

    assert hook().scan()["retry-job"].startswith("retry: RunPod POST")
    view = rec.read_view(redis_client, "retry-job")
    assert view.number(rec.ON_END_ATTEMPTS) == 1 and view.number(rec.ON_END_NEXT_AT) == 1002.0
    assert "500 Internal Server Error" in view.get(rec.ON_END_ERROR)
    assert hook().scan() == {}  # not due yet
    now[0] = 1002.0
    assert hook().scan()["retry-job"].startswith("retry:")
    assert rec.read_view(redis_client, "retry-job").number(rec.ON_END_NEXT_AT) == 1006.0
    state = remote_status(runpod_api, "retry-job")["on_end"]
    assert state["state"] == "retrying" and state["attempts"] == 2
    assert "429" in state["last_error"] and state["next_attempt_at"]
    now[0] = 1006.0
    assert hook().scan() == {"retry-job": "stopped"}
    assert [r.status for r in runpod_api.calls("podAction")] == [500, 429, 200]
    assert remote_status(runpod_api, "retry-job")["on_end"]["state"] == "done"


def test_remote_stop_by_hand_stops_now_and_the_row_ends_cancelled(
    tmp_path, redis_client, pipeline_env, runpod_api
):
    rows = create_row(pipeline_env, "hand-job")
    pod = launch(tmp_path, runpod_api, "hand-job")
    runpod_api.set_status(pod["id"], "RUNNING")
    PodEvents(pod["env"]).run(end=None)
    run_all_in_one(redis_client, pipeline_env, burst=True)

    done = cli("remote", "stop", "hand-job", env=runpod_env(runpod_api.url))
    assert done.exit_code == 0, done.output
    assert done.output == "hand-job: pod stopped by hand\n"
    assert runpod_api.pods[pod["id"]]["status"] == "EXITED"
    pump_pass(runpod_api)  # sees the pod stopped while the job ran
    run_all_in_one(redis_client, pipeline_env, burst=True)
    row = rows.read_job("hand-job")
    assert row["status"] == "cancelled" and "stopped by hand" in row["error_message"]
    pump_pass(runpod_api)
    assert len(runpod_api.calls("podAction")) == 1  # on_end was done by hand: not again
    assert not redis_client.sismember(rec.PODS_KEY, "hand-job")
    terminated = cli("remote", "stop", "hand-job", "--terminate", env=runpod_env(runpod_api.url))
    assert terminated.output == "hand-job: pod terminated by hand\n" and runpod_api.pods == {}


def test_stop_of_a_job_without_a_pod_is_an_error(redis_client, pipeline_env, runpod_api):
    done = cli("remote", "stop", "no-pod-job", env=runpod_env(runpod_api.url))
    assert done.exit_code == 2 and "no RunPod pod recorded" in done.output
    lifecycle = PodLifecycle(redis_client, LifecycleConfig())
    with pytest.raises(RuntimeError, match="no RunPod pod"):
        stop_by_hand(lifecycle, "no-pod-job", "stop")


def test_the_poll_interval_and_retry_settings_come_from_the_environment():
    config = LifecycleConfig.from_env(
        {
            "CKPT_RUNPOD_POLL_S": "45",
            "CKPT_RUNPOD_RETRY_FIRST_S": "3",
            "CKPT_RUNPOD_RETRY_MAX_S": "10",
        }
    )
    assert (config.poll_s, config.retry_first_s, config.retry_max_s) == (45.0, 3.0, 10.0)
    assert [config.backoff_s(n) for n in (1, 2, 3)] == [3.0, 6.0, 10.0]
    assert LifecycleConfig.from_env({}).poll_s == 30.0
    with pytest.raises(ValueError, match="CKPT_RUNPOD_POLL_S"):
        LifecycleConfig.from_env({"CKPT_RUNPOD_POLL_S": "soon"})
