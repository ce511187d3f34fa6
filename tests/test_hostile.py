"""Issue #13's findings, each written as the attack or the bad input itself, against a private
redis-server: a hostile pod or a careless user gets a clear answer and hurts no other job."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from producer.events import build_event, encode_event
from producer.wire import checkpoint_step, is_valid_job_id
from scorer_worker import keys
from scorer_worker.registry import register_job
from scorer_worker.store import load_state

MAX_ID = "18446744073709551615-18446744073709551615"


def evaluation(job: str, step: int, loss: float) -> str:
    return encode_event(build_event("eval", job, step, step / 10, {"eval_loss": loss}, ts=step))


def cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``ckpt-pipeline ARGS`` as a user would (raises TimeoutExpired if it hangs)."""
    command = [sys.executable, "-m", "ckpt_pipeline.cli", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=dict(os.environ), timeout=timeout_s
    )


def burst_ends(timeout_s: float = 60.0) -> bool:
    """Run ``work --burst``; return True when it ended by itself with status 0."""
    return cli("work", "--burst", timeout_s=timeout_s).returncode == 0


def test_the_largest_stream_id_neither_stalls_the_job_nor_the_burst(redis_client, pipeline_env):
    register_job(redis_client, "j-max", "tok")
    register_job(redis_client, "j-other", "tok")
    redis_client.xadd(keys.events("j-max"), {"event": evaluation("j-max", 10, 1.0)})
    redis_client.xadd(keys.events("j-max"), {"event": evaluation("j-max", 20, 0.9)}, id=MAX_ID)
    redis_client.xadd(keys.events("j-other"), {"event": evaluation("j-other", 10, 1.0)})
    assert burst_ends()
    state = load_state(redis_client, "j-max")
    assert sorted(state.evals) == [10, 20] and state.cursor == MAX_ID
    assert redis_client.xlen(keys.events("j-max")) == 0
    assert sorted(load_state(redis_client, "j-other").evals) == [10]
    assert not redis_client.exists("rq:failed:scoring")
    assert burst_ends()  # and again, with the cursor at the end


def test_a_job_id_with_a_trailing_newline_is_not_valid():
    assert is_valid_job_id("job") and not is_valid_job_id("job\n")
    for bad in ("", "jöb", "*", "a{b", "a b", "x" * 65):
        assert not is_valid_job_id(bad)


def test_checkpoint_folder_names_with_other_digits_are_not_checkpoints():
    assert checkpoint_step("checkpoint-12") == 12
    for name in ("checkpoint-²", "checkpoint-١٢", "checkpoint-99999999999999999999999"):
        assert checkpoint_step(name) is None


def test_two_resumes_at_one_time_keep_the_same_records_in_either_order():
    from .helpers import begin, evaluation, fold

    early_eval = evaluation(20, 0.9, ts=5.0)  # an earlier attempt's eval at step 20
    first, second = begin(ts=10.0, resumed_from_step=10), begin(ts=10.0, resumed_from_step=30)
    prints = {
        fold(order).fingerprint()
        for order in (
            [early_eval, first, second],
            [early_eval, second, first],
            [first, second, early_eval],
            [second, early_eval, first],
        )
    }
    assert len(prints) == 1
    assert fold([early_eval, second, first]).evals == {}  # the resume from 10 drops it


def test_a_flood_of_junk_cannot_evict_another_jobs_dead_letters(
    redis_client, pipeline_env, monkeypatch
):
    monkeypatch.setenv("CKPT_DEAD_LETTERS_PER_JOB", "1000")
    register_job(redis_client, "victim", "tok")
    register_job(redis_client, "flooder", "tok")
    redis_client.xadd(keys.events("victim"), {"event": '{"v": 1, "kind": "eval"'})
    pipe = redis_client.pipeline(transaction=False)
    for i in range(3000):
        pipe.xadd(keys.events("flooder"), {"event": f"junk {i}"})
    pipe.execute()
    assert burst_ends()
    listed = cli("dead", "list", "--job", "victim")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1
    assert listed.stdout.startswith("victim/")
    assert redis_client.xlen(keys.dead("flooder")) == 1000  # its own cap: the newest kept
    assert load_state(redis_client, "victim").dead_letters == 1
    shown = cli("dead", "show", listed.stdout.split()[0])
    assert shown.returncode == 0 and "job_id: victim" in shown.stdout


def test_dead_letter_commands_refuse_malformed_input_in_one_line(redis_client, pipeline_env):
    for args in (
        ("dead", "show", "abc"),
        ("dead", "requeue", "abc"),
        ("dead", "purge", "abc"),
        ("dead", "list", "--count", "0"),
        ("dead", "list", "--count", "-1"),
        ("dead", "list", "--job", "a b"),
    ):
        done = cli(*args)
        assert done.returncode == 2, args
        assert "Traceback" not in done.stderr and done.stderr.strip(), args


def test_every_subcommands_help_exits_0():
    for args in (("--help",), ("status", "--help"), ("dead", "list", "--help"), ("work", "--help")):
        done = cli(*args)
        assert done.returncode == 0 and "Usage:" in done.stdout and "error" not in done.stderr


POD_PASSWORD = "pod-pass-0123456789abcdef"
TOKEN = "job-token-0123456789"


def end_event(job: str, error: str) -> str:
    info = {"status": "failed", "error": error}
    return encode_event(build_event("train_end", job, 5, 0.5, info=info, ts=5.0))


def test_no_secret_reaches_a_row_a_status_or_a_dead_letter(redis_client, pipeline_env):
    from scorer_worker.registry import record_pod_user

    job = "leaky"
    created = cli("register", job, TOKEN, "--create-row")
    assert created.returncode == 0, created.stderr
    record_pod_user(redis_client, job, f"ckpt-pod-{job}", POD_PASSWORD)
    error = (
        f"boom: token {TOKEN}, password {POD_PASSWORD}, "
        f"url redis://ckpt-pod-{job}:{POD_PASSWORD}@redis.example:6379/0 "
        "db postgresql://admin:hunter22@db.example/x"
    )
    redis_client.xadd(keys.events(job), {"event": end_event(job, error)})
    redis_client.xadd(keys.events(job), {"event": f'{{"oops": "{POD_PASSWORD}"'})
    assert burst_ends()
    outputs = [
        cli("status", job).stdout,
        cli("status", job, "--json").stdout,
        cli("dead", "list", "--job", job).stdout,
    ]
    ref = outputs[-1].split()[0]
    outputs.append(cli("dead", "show", ref).stdout)
    assert "boom" in outputs[0] and "boom" in outputs[1] and "oops" in outputs[3]
    for text in outputs:
        for secret in (TOKEN, POD_PASSWORD, "hunter22"):
            assert secret not in text
    assert "***" in outputs[0]


def test_nul_and_escape_sequences_reach_neither_the_row_nor_the_terminal(
    redis_client, pipeline_env
):
    from sink.rows import job_row

    job = "escapes"
    assert cli("register", job, TOKEN, "--create-row").returncode == 0
    info = {"max_steps": 10, "resumed_from_step": 0, "output_dir": "/out\x00/\x1b]0;pwned\x07"}
    begin = build_event("train_begin", job, 0, 0.0, info=info, ts=1.0)
    redis_client.xadd(keys.events(job), {"event": encode_event(begin)})
    redis_client.xadd(keys.events(job), {"event": evaluation(job, 5, 1.0)})
    redis_client.xadd(keys.events(job), {"event": end_event(job, "bad\x00 \x1b[2J\x1b[31mred")})
    assert burst_ends()
    row = job_row(load_state(redis_client, job))
    assert all("\x00" not in v for v in row.values() if isinstance(v, str))
    shown = cli("status", job)
    assert shown.returncode == 0
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "\\x1b[2J" in shown.stdout  # shown, inert


def pod_client(redis_client, redis_server, job: str):
    """Register ``job`` with pod credentials; return a client logged in as its pod."""
    import redis

    from remote.credentials import create_pod_user
    from scorer_worker.registry import record_pod_user

    register_job(redis_client, job, TOKEN)
    credentials = create_pod_user(redis_client, job, redis_server.url)
    record_pod_user(redis_client, job, credentials.username, credentials.password)
    return redis.Redis.from_url(credentials.redis_url)


def pump_pass(redis_client, **overrides):
    from scorer_worker.pump import Pump
    from scorer_worker.settings import Settings
    from sink.tasks import FLUSH

    settings = Settings.from_env().model_copy(update={"limits_interval_s": 0.0, **overrides})
    pump = Pump(redis_client, settings, flush=FLUSH)
    pump.run_once()
    return pump


def test_a_flooding_pod_is_cut_off_and_its_row_fails_with_the_reason(
    redis_client, redis_server, pipeline_env, monkeypatch
):
    import redis

    monkeypatch.setenv("CKPT_JOB_MAX_UNDRAINED_EVENTS", "5000")
    assert cli("register", "flood", TOKEN, "--create-row").returncode == 0
    pod = pod_client(redis_client, redis_server, "flood")
    assert cli("register", "calm", TOKEN, "--create-row").returncode == 0
    redis_client.xadd(keys.events("calm"), {"event": evaluation("calm", 10, 1.0)})
    pipe = pod.pipeline(transaction=False)
    for i in range(6000):
        pipe.xadd(keys.events("flood"), {"event": evaluation("flood", i, 1.0)})
    pipe.execute()
    pump_pass(redis_client, job_max_undrained_events=5000)
    assert b"5000" in redis_client.hget(keys.meta("flood"), "cut_off")
    try:  # the pod's user is off and its connection closed
        pod.xadd(keys.events("flood"), {"event": "more"})
        raise AssertionError("the flooding pod could still publish")
    except (redis.AuthenticationError, redis.ConnectionError, redis.ResponseError):
        pass
    assert burst_ends()
    assert not redis_client.exists(keys.events("flood"))  # the backlog is freed, unread
    shown = cli("status", "flood", "--json")
    assert '"status": "failed"' in shown.stdout and "cut off" in shown.stdout
    assert "await the scorer" in shown.stdout
    assert load_state(redis_client, "calm").evals  # the other job is scored


def test_a_burst_beyond_the_bucket_cuts_the_pod_off_but_a_spool_burst_does_not(
    redis_client, redis_server, pipeline_env
):
    pod = pod_client(redis_client, redis_server, "bursty")
    overrides = {"job_burst_events": 500, "job_max_events_per_s": 10.0}
    keeper = pump_pass(redis_client, **overrides).limits
    pipe = pod.pipeline(transaction=False)
    for i in range(400):  # a spool delivered after an outage: within the bucket
        pipe.xadd(keys.events("bursty"), {"event": evaluation("bursty", i, 1.0)})
    pipe.execute()
    keeper.check(["bursty"])
    assert not redis_client.hexists(keys.meta("bursty"), "cut_off")
    for i in range(400, 800):
        pipe.xadd(keys.events("bursty"), {"event": evaluation("bursty", i, 1.0)})
    pipe.execute()
    keeper.check(["bursty"])
    assert b"events/s" in redis_client.hget(keys.meta("bursty"), "cut_off")


def test_oversized_and_many_field_entries_are_dead_letters_read_in_bounded_steps(
    redis_client, redis_server, pipeline_env
):
    from scorer_worker.store import OversizeEntry, StateTransaction

    pod = pod_client(redis_client, redis_server, "heavy")
    pod.xadd(keys.events("heavy"), {"event": evaluation("heavy", 10, 1.0), "junk": "x" * 4_000_000})
    for _ in range(5):
        pod.xadd(keys.events("heavy"), {"event": "y" * 1_000_000})
    pod.xadd(keys.events("heavy"), {"event": evaluation("heavy", 20, 0.9)})
    txn = StateTransaction(redis_client, "heavy")  # 9 MB waiting, read with a 1 MB budget
    read = txn.read_events(100, max_bytes=1_000_000)
    assert [isinstance(fields, OversizeEntry) for _, fields in read] == [True] * 6 + [False]
    assert all(len(f.head) <= 4096 for _, f in read if isinstance(f, OversizeEntry))
    assert burst_ends()
    state = load_state(redis_client, "heavy")
    assert sorted(state.evals) == [20] and state.dead_letters == 6
    reasons = cli("dead", "list", "--job", "heavy").stdout
    assert reasons.count("exceeds") == 5 and "more fields than one" in reasons


def test_a_silent_job_is_reported_stalled_until_it_talks_again(redis_client, pipeline_env):
    import time

    from sink.rows import job_row

    register_job(redis_client, "quiet", TOKEN)
    redis_client.xadd(keys.events("quiet"), {"event": evaluation("quiet", 10, 1.0)})
    assert burst_ends()
    time.sleep(0.2)
    pump_pass(redis_client, stall_after_s=0.1)
    assert redis_client.hexists(keys.meta("quiet"), "stalled_since")
    assert burst_ends()
    row = job_row(load_state(redis_client, "quiet"))
    assert row["status"] == "running" and row["error_message"].startswith("stalled")
    redis_client.xadd(keys.events("quiet"), {"event": evaluation("quiet", 20, 0.9)})
    assert burst_ends()
    row = job_row(load_state(redis_client, "quiet"))
    assert row["error_message"] is None and not redis_client.hexists(
        keys.meta("quiet"), "stalled_since"
    )


def test_heavy_checkpoint_lists_cannot_grow_a_pods_state_without_bound(
    redis_client, redis_server, pipeline_env
):
    pod = pod_client(redis_client, redis_server, "lists")
    names = [f"checkpoint-{s}" for s in range(1000)]  # the cap: 1,000 names an event
    pipe = pod.pipeline(transaction=False)
    for step in range(1, 301):
        info = {"checkpoint": f"checkpoint-{step}", "retained": names}
        event = build_event("checkpoint_saved", "lists", step, 0.1, info=info, ts=float(step))
        pipe.xadd(keys.events("lists"), {"event": encode_event(event)})
    pipe.execute()
    assert burst_ends()
    assert redis_client.memory_usage(keys.state("lists")) > 2_000_000  # 300 lists kept
    pump_pass(redis_client, job_max_state_bytes=2_000_000)
    assert b"state" in redis_client.hget(keys.meta("lists"), "cut_off")
    assert burst_ends()
    assert load_state(redis_client, "lists").status == "failed"
    too_many = {"checkpoint": "checkpoint-1", "retained": [*names, "checkpoint-1000"]}
    event = build_event("checkpoint_saved", "other", 301, 0.1, info=too_many, ts=301.0)
    register_job(redis_client, "other", TOKEN)
    # A hostile pod skips encode_event, which would keep the newest 1,000 names.
    redis_client.xadd(keys.events("other"), {"event": json.dumps(event)})
    assert burst_ends()
    assert load_state(redis_client, "other").dead_letters == 1


def test_a_full_redis_makes_the_producer_spool_and_the_drain_wait_uncommitted(tmp_path):
    import time

    import pytest
    import redis

    from ckpt_pipeline.testing.local_redis import LocalRedis
    from producer import EventPublisher
    from scorer_worker.drain import drain_job
    from scorer_worker.settings import Settings

    server = LocalRedis(
        tmp_path / "redis", extra_args=["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    ).start()
    try:
        client = redis.Redis.from_url(server.url)
        register_job(client, "full", TOKEN)
        client.xadd(keys.events("full"), {"event": evaluation("full", 10, 1.0)})
        client.config_set("maxmemory", "1")  # less than Redis holds: every write is refused
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("anything", "x")
        publisher = EventPublisher("full", server.url, spool_dir=tmp_path / "spool")
        publisher.emit("eval", 20, 2.0, {"eval_loss": 0.9})
        publisher.flush(5.0)
        assert (publisher.spooled, publisher.sent, publisher.dropped) == (1, 0, 0)
        settings = Settings(redis_url=server.url)
        with pytest.raises(redis.exceptions.RedisError):
            drain_job(client, "full", settings)
        assert load_state(client, "full").version == 0  # nothing half-committed
        client.config_set("maxmemory", "64mb")
        deadline = time.monotonic() + 15
        while publisher.spool.pending() and time.monotonic() < deadline:
            time.sleep(0.1)  # the publisher delivers its spool once Redis takes writes again
        publisher.close(5.0)
        drain_job(client, "full", settings)
        assert sorted(load_state(client, "full").evals) == [10, 20]
    finally:
        server.stop()


def test_work_stops_on_the_first_sigterm(redis_client, pipeline_env):
    import signal
    import time

    register_job(redis_client, "term", TOKEN)
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt_pipeline.cli", "work"], env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            redis_client.xadd(keys.events("term"), {"event": evaluation("term", 10, 1.0)})
            if load_state(redis_client, "term").version:
                break  # it is running: a drain committed
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        process.kill()


def test_remote_render_writes_to_stdout_with_dash_and_refuses_a_folder(tmp_path):
    spec = {"job_id": "render-1", "model": "gpt2", "dataset": "d.jsonl", "output_dir": "/out"}
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    shown = cli("remote", "render", str(path), "-o", "-")
    assert shown.returncode == 0 and shown.stdout.startswith("#!/usr/bin/env python3")
    assert not list(tmp_path.glob("pod_*.py"))  # nothing written
    refused = cli("remote", "render", str(path), "-o", str(tmp_path))
    assert refused.returncode == 2 and "is a folder" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_stall_noted_just_before_events_arrive_is_never_reported(redis_client, pipeline_env):
    from sink.rows import job_row

    register_job(redis_client, "racy", TOKEN)
    redis_client.xadd(keys.events("racy"), {"event": evaluation("racy", 10, 1.0)})
    assert burst_ends()
    redis_client.hset(keys.meta("racy"), "stalled_since", "1.0")  # the pump's note...
    redis_client.xadd(keys.events("racy"), {"event": evaluation("racy", 20, 0.9)})  # ...too late
    assert burst_ends()
    assert not redis_client.hexists(keys.meta("racy"), "stalled_since")
    assert burst_ends()  # idle now: the stale note must not turn into a report
    assert job_row(load_state(redis_client, "racy"))["error_message"] is None


def test_the_limit_check_reads_only_the_jobs_it_may_act_on(redis_client):
    import time

    from scorer_worker.keys import MetaField
    from scorer_worker.limits import read_usage
    from scorer_worker.registry import record_pod_user

    now = time.time()
    jobs = {
        "busy": {MetaField.STATUS: "running", MetaField.DRAINED_AT: repr(now)},
        "quiet": {MetaField.STATUS: "running", MetaField.DRAINED_AT: repr(now - 100)},
        "quiet_with_backlog": {MetaField.STATUS: "running", MetaField.DRAINED_AT: repr(now - 100)},
        "reported": {
            MetaField.STATUS: "running", MetaField.DRAINED_AT: repr(now - 100),
            MetaField.STALLED_SINCE: repr(now - 100),
        },
        "ended": {MetaField.STATUS: "completed", MetaField.DRAINED_AT: repr(now - 100)},
        "cut": {MetaField.STATUS: "running", MetaField.CUT_OFF: "too much"},
        "cut_drained": {MetaField.STATUS: "running", MetaField.CUT_OFF: "too much"},
        "pod": {MetaField.STATUS: "running", MetaField.DRAINED_AT: repr(now)},
    }  # fmt: skip
    for job, fields in jobs.items():
        register_job(redis_client, job, TOKEN)
        redis_client.hset(keys.meta(job), mapping=fields)
    for job in ("cut", "pod", "quiet_with_backlog"):
        redis_client.xadd(keys.events(job), {"event": evaluation(job, 10, 1.0)})
    record_pod_user(redis_client, "pod", "pod-user")
    found = {u.job_id: u for u in read_usage(redis_client, list(jobs), now - 50)}
    # Busy, reported, ended and drained cut-off jobs cost no Python time; neither does a job
    # whose backlog the drain will fold (it talks).
    assert sorted(found) == ["cut", "pod", "quiet"]
    assert found["cut"].undrained == 1 and found["cut"].cut_off == "too much"
    assert found["quiet"].drained_at == now - 100 and found["quiet"].stalled_since is None
    pod = found["pod"]
    assert pod.pod_user == "pod-user" and pod.entries_added == 1 and pod.stream_bytes > 0
    assert pod.state_bytes == 0  # no state yet
