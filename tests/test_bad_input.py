"""Bad input is contained: every invalid event lands in ckpt:dead with a reason; no worker dies."""

from __future__ import annotations

import json

import pytest
from rq import Queue
from rq.registry import FailedJobRegistry

from ckpt_pipeline.runner import run_all_in_one
from producer.events import build_event, encode_event
from scorer_worker import keys
from scorer_worker.deadletter import list_dead_letters
from scorer_worker.registry import register_job
from scorer_worker.store import load_state
from sink.writers.sqlite import SqliteWriter

JOB = "bad-input-job"


def valid(kind: str, step: int, **fields) -> str:
    return encode_event(build_event(kind, JOB, step, step / 10, ts=float(step), **fields))


def raw(**fields) -> str:
    """A JSON eval event of JOB, with ``fields`` overriding or adding keys."""
    return json.dumps({"v": 1, "job_id": JOB, "kind": "eval", "step": 7, "ts": 1, **fields})


NAN_LITERAL = '{"v":1,"job_id":"%s","kind":"eval","step":7,"ts":1,"metrics":{"eval_loss":NaN}}'
BAD_PAYLOADS = {
    "malformed JSON": b'{"v": 1, "job_id": ',
    "not an object": b"[1, 2, 3]",
    "binary garbage": bytes(range(256)),
    "wrong type for step": raw(step="7"),
    "bool step": raw(step=True),
    "missing ts": json.dumps({"v": 1, "job_id": JOB, "kind": "eval", "step": 7}),
    "unknown kind": raw(kind="explode"),
    "unknown version": raw(v=9),
    "job id not the stream's": raw(job_id="other-job", metrics={"eval_loss": 0.1}),
    "bare NaN literal": NAN_LITERAL.replace("%s", JOB),
    "string metric": raw(metrics={"eval_loss": "low"}),
    "negative step": raw(step=-1),
    "bad end status": raw(kind="train_end", info={"status": "exploded"}),
    "oversize": raw(pad="x" * 70_000),
    # Values no row can hold (integer columns, datetimes): refused, not left to poison the row.
    "step beyond the row's integer": raw(step=2**31),
    "epoch beyond the row's integer": raw(epoch=1e300),
    "timestamp beyond year 9999": raw(ts=1e12),
    "negative timestamp": raw(ts=-1e12),
}


@pytest.fixture
def job(redis_client, pipeline_env):
    writer = SqliteWriter(pipeline_env.sink_url.removeprefix("sqlite:///"))
    writer.ensure_schema()
    writer.create_job(JOB, "token-1")
    register_job(redis_client, JOB, "token-1")
    return writer


def test_every_invalid_event_is_dead_lettered_and_valid_ones_count(redis_client, pipeline_env, job):
    stream = keys.events(JOB)
    redis_client.xadd(stream, {"event": valid("train_log", 5, metrics={"loss": 1.0})})
    for payload in BAD_PAYLOADS.values():
        redis_client.xadd(stream, {"event": payload})
    redis_client.xadd(stream, {"wrong_field": "x"})
    redis_client.xadd(stream, {"event": valid("eval", 10, metrics={"eval_loss": 1.2})})

    run_all_in_one(redis_client, pipeline_env, burst=True)

    letters = list_dead_letters(redis_client, count=100)
    assert len(letters) == len(BAD_PAYLOADS) + 1
    assert all(letter.job_id == JOB and letter.reason for _, letter in letters)
    reasons = " | ".join(letter.reason for _, letter in letters)
    expected = ("malformed JSON", "not a JSON object", "step", "ts", "kind", "wire version 9",
                "does not match stream job", "bare NaN", "exceeds 65536",
                "no 'event' field", "less than or equal to 2147483647",
                "less than or equal to 253402300799")  # fmt: skip
    for fragment in expected:
        assert fragment in reasons, fragment
    assert all(
        len(letter.payload.encode()) <= pipeline_env.dead_payload_max_bytes * 4
        for _, letter in letters
    )

    state = load_state(redis_client, JOB)
    assert sorted(state.train) == [5] and sorted(state.evals) == [10]
    assert state.dead_letters == len(BAD_PAYLOADS) + 1
    assert len(FailedJobRegistry("scoring", connection=redis_client)) == 0
    assert Queue("scoring", connection=redis_client).count == 0
    assert job.read_job(JOB)["best_checkpoint_step"] == 10


def test_dead_letters_keep_no_token(redis_client, pipeline_env, job):
    redis_client.xadd(keys.events(JOB), {"event": '{"job_token": "token-1", "oops": '})
    run_all_in_one(redis_client, pipeline_env, burst=True)
    ((_, letter),) = list_dead_letters(redis_client)
    assert letter.reason.startswith("malformed JSON")
    assert letter.payload.startswith('{"job_token": "***"') and letter.redacted  # minus it
    assert "token-1" not in letter.payload
    assert not any(b"token-1" in v for v in redis_client.hgetall(keys.state(JOB)).values())
