"""Experiment 5, bad input: more than 10,000 generated invalid entries are XADDed raw into the
streams of live jobs, between their valid events (which also arrive replayed and out of
order). No worker dies, every invalid entry is in ``ckpt:dead`` with a readable reason, no
valid event is, and the state and rows of the jobs equal those of a clean run of their valid
events alone.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from typing import Any

import pytest
import redis
from rq.registry import FailedJobRegistry

from ckpt_pipeline.testing.convergence import wait_converged
from ckpt_pipeline.testing.events import synthetic_events
from ckpt_pipeline.testing.jobs import make_jobs
from producer.events import encode_event
from scorer_worker import keys
from scorer_worker.deadletter import list_dead_letters
from scorer_worker.store import load_state

from .harness import record, reference_run, setup_jobs
from .rows import compare_runs

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, INVALID_PER_JOB, SEED = 10, 500, 1050, 5
REPLAYS_PER_JOB, SHUFFLE_WINDOW = 100, 25


def _json(event: dict[str, Any], **changes: Any) -> str:
    return json.dumps({**event, **changes})


def _without(event: dict[str, Any], name: str) -> str:
    return json.dumps({k: v for k, v in event.items() if k != name})


def _nested(event: dict[str, Any], field: str, value: Any) -> str:
    return json.dumps({**event, field: value})


# Every kind of invalid entry: (category, reason fragment, maker(rng, valid_event, other_job)).
# A maker returns the raw ``event`` field, or a dict for an entry with other fields.
# fmt: off
CATEGORIES: list[tuple[str, str, Any]] = [
    ("malformed JSON", "malformed JSON",
     lambda r, e, o: (t := encode_event(e))[: r.randrange(1, len(t))]),
    ("not a JSON object", "not a JSON object",
     lambda r, e, o: json.dumps(r.choice([[1, 2], "text", 42, None, True, 3.5]))),
    ("binary garbage", "malformed JSON",
     lambda r, e, o: b"\xff" + r.randbytes(r.randrange(1, 512))),
    ("no event field", "no 'event' field", lambda r, e, o: {"payload": encode_event(e)}),
    ("oversize payload", "exceeds 65536",
     lambda r, e, o: _json(e, pad="x" * r.randrange(65_600, 80_000))),
    ("wrong type: step", "step", lambda r, e, o: _json(e, step=r.choice(["7", 7.5, True, [7]]))),
    ("wrong type: ts", "ts", lambda r, e, o: _json(e, ts=r.choice(["1", None, True, {}]))),
    ("wrong type: kind", "kind", lambda r, e, o: _json(e, kind=r.choice([3, None, ["eval"]]))),
    ("wrong type: metrics", "metrics",
     lambda r, e, o: _json(e, metrics=r.choice([[1, 2], "x", {"loss": [1]}, {"loss": True},
                                                {"loss": "low"}]))),
    ("wrong type: epoch", "epoch", lambda r, e, o: _json(e, epoch=r.choice(["1", True, [1]]))),
    ("wrong type: job_id", "job_id", lambda r, e, o: _json(e, job_id=r.choice([5, None, ["a"]]))),
    ("wrong type: info", "info",
     lambda r, e, o: _json(e, kind="train_begin", info=r.choice(["x", [1], 4]))),
    ("missing field", "",
     lambda r, e, o: _without(e, r.choice(["v", "job_id", "kind", "step", "ts"]))),
    ("negative step", "step", lambda r, e, o: _json(e, step=r.choice([-1, -500]))),
    ("negative epoch", "epoch", lambda r, e, o: _json(e, epoch=-0.5)),
    ("number as string", "",
     lambda r, e, o: r.choice([_json(e, step="-1"), _json(e, ts="nan"), _json(e, ts="inf"),
                               _json(e, epoch="-inf"), _json(e, metrics={"loss": "-5"}),
                               _json(e, metrics={"loss": "NaN"}),
                               _json(e, metrics={"eval_loss": "Infinity"})])),
    ("bare NaN/Infinity literal", "bare",
     lambda r, e, o: json.dumps({**e, "ts": float(r.choice(["nan", "inf", "-inf"]))})),
    ("wrong job id", "",
     lambda r, e, o: _json(e, job_id=r.choice([o, "bad job!", "", "x" * 65]))),
    ("unknown kind", "kind", lambda r, e, o: _json(e, kind=r.choice(["explode", "TRAIN_LOG", ""]))),
    ("unknown version", "wire version", lambda r, e, o: _json(e, v=r.choice([0, 2, 99, -1]))),
    ("bad checkpoint info", "info",
     lambda r, e, o: _json(e, kind="checkpoint_saved",
                           info=r.choice([{"checkpoint": "../etc", "retained": []},
                                          {"checkpoint": "checkpoint-1", "retained": "all"},
                                          {"retained": []}]))),
    ("bad end status", "info.status",
     lambda r, e, o: _json(e, kind="train_end", info={"status": r.choice(["exploded", 1])})),
    # Valid JSON of the right types whose values no row can hold: the row's integer columns,
    # and timestamps beyond year 9999. Accepted, they would poison the job's row forever.
    ("step beyond the row's integer", "step",
     lambda r, e, o: _json(e, step=r.choice([2**31, 2**40, 10**30]))),
    ("max_steps beyond the row's integer", "max_steps",
     lambda r, e, o: _json(e, kind="train_begin",
                           info={"max_steps": 2**40, "resumed_from_step": 0})),
    ("epoch beyond the row's integer", "epoch", lambda r, e, o: _json(e, epoch=1e300)),
    ("timestamp beyond year 9999", "ts", lambda r, e, o: _json(e, ts=r.choice([1e12, 1e300]))),
]
# fmt: on


def fingerprint(job_id: str, client: redis.Redis) -> str:
    """The job's facts, without the bookkeeping that depends on batching (versions)."""
    state = load_state(client, job_id)

    def plain(records: dict[int, Any]) -> dict[int, Any]:
        return {
            step: {k: v for k, v in asdict(r).items() if k != "changed"}
            for step, r in records.items()
        }

    facts = {
        "begins": sorted(json.dumps(asdict(b), sort_keys=True) for b in state.begins),
        "train": plain(state.train),
        "evals": plain(state.evals),
        "saves": plain(state.saves),
        "end": asdict(state.end) if state.end else None,
    }
    # Compared as JSON: NaN losses are equal there (two float NaN objects never are).
    return json.dumps(facts, sort_keys=True)


def readable(reason: str) -> bool:
    return bool(reason.strip()) and reason.isprintable() and len(reason) <= 1000


def test_bad_input_is_contained_and_valid_events_count_as_in_a_clean_run(
    make_redis, make_database, make_pipeline
):
    rng = random.Random(SEED)
    jobs = make_jobs(JOBS, SEED)
    ids = [job.id for job in jobs]
    valid = {job.id: synthetic_events(job.id, SEED, EVENTS_PER_JOB) for job in jobs}
    clean = {job_id: [encode_event(e) for e in events] for job_id, events in valid.items()}

    reference_db, reference_redis = make_database("reference"), make_redis("reference")
    reference_run(reference_redis.url, reference_db, jobs, clean)
    reference_client = redis.Redis.from_url(reference_redis.url)
    expected_states = {job_id: fingerprint(job_id, reference_client) for job_id in ids}
    reference_redis.stop()

    server, db = make_redis("redis"), make_database("bad")
    client = redis.Redis.from_url(server.url)
    setup_jobs(db, client, jobs)
    pipeline = make_pipeline(server.url, db)

    invalid_by_entry: dict[str, tuple[str, str]] = {}
    counts = {"valid": 0, "replayed": 0, "reordered_windows": 0}
    per_category: dict[str, int] = {}
    for job in jobs:
        others = [j for j in ids if j != job.id]
        stream: list[tuple[str | None, Any]] = []
        delivered = list(clean[job.id])
        for start in range(0, len(delivered), SHUFFLE_WINDOW):  # out-of-order steps
            window = delivered[start : start + SHUFFLE_WINDOW]
            rng.shuffle(window)
            delivered[start : start + SHUFFLE_WINDOW] = window
            counts["reordered_windows"] += 1
        for _ in range(REPLAYS_PER_JOB):  # at-least-once redelivery, anywhere later
            delivered.insert(rng.randrange(len(delivered) + 1), rng.choice(clean[job.id]))
        counts["valid"] += len(clean[job.id])
        counts["replayed"] += REPLAYS_PER_JOB
        stream = [(None, payload) for payload in delivered]
        for i in range(INVALID_PER_JOB):
            category, fragment, make = CATEGORIES[i % len(CATEGORIES)]
            raw = make(rng, rng.choice(valid[job.id]), rng.choice(others))
            stream.insert(rng.randrange(len(stream) + 1), ((category, fragment), raw))
            per_category[category] = per_category.get(category, 0) + 1
        pipe = client.pipeline(transaction=False)
        for _, raw in stream:
            pipe.xadd(keys.events(job.id), raw if isinstance(raw, dict) else {"event": raw})
        for (label, _), entry_id in zip(stream, pipe.execute(), strict=True):
            if label is not None:
                invalid_by_entry[entry_id.decode()] = label

    converge_s = wait_converged(client, ids, timeout_s=60)
    exited = pipeline.exited()
    failed = sum(len(FailedJobRegistry(q, connection=client)) for q in ("scoring", "sink"))
    letters = [letter for _, letter in list_dead_letters(client, count=10**6)]
    by_entry = {letter.entry_id: letter for letter in letters}
    missing = [e for e in invalid_by_entry if e not in by_entry]
    valid_dead = [letter for letter in letters if letter.entry_id not in invalid_by_entry]
    unreadable = [letter.reason for letter in letters if not readable(letter.reason)]
    unexplained = [
        (invalid_by_entry[e][0], by_entry[e].reason)
        for e in invalid_by_entry
        if e in by_entry and invalid_by_entry[e][1] not in by_entry[e].reason
    ]
    states_differing = [j for j in ids if fingerprint(j, client) != expected_states[j]]
    comparison = compare_runs(db, reference_db, ids)
    examples = {}
    for entry_id, (category, _) in invalid_by_entry.items():
        if category not in examples and entry_id in by_entry:
            examples[category] = by_entry[entry_id].reason[:160]
    record(
        "5-bad-input",
        {
            "title": "Bad input",
            "jobs": JOBS,
            "invalid_entries": len(invalid_by_entry),
            "invalid_by_category": per_category,
            "valid_events": counts["valid"],
            "valid_replays": counts["replayed"],
            "valid_reordered_windows": f"{counts['reordered_windows']} windows of "
            f"{SHUFFLE_WINDOW} events shuffled",
            "dead_letters": len(letters),
            "invalid_not_dead_lettered": len(missing),
            "valid_dead_lettered": len(valid_dead),
            "unreadable_reasons": len(unreadable),
            "reasons_not_naming_the_problem": len(unexplained),
            "reason_examples": examples,
            "processes_that_exited_by_themselves": exited,
            "rq_jobs_failed": failed,
            "states_differing_from_clean_run": len(states_differing),
            "converged_seconds": round(converge_s, 1),
            **comparison.summary(),
            "lost": comparison.lost + len(states_differing),
            "duplicates": comparison.duplicate_metric_rows,
        },
    )
    print(f"{len(invalid_by_entry)} invalid entries, {len(letters)} dead letters")
    assert len(invalid_by_entry) >= 10_000
    assert not exited and failed == 0
    assert not missing, [invalid_by_entry[e] for e in missing[:5]]
    assert not valid_dead, [(letter.reason, letter.payload[:200]) for letter in valid_dead[:5]]
    assert not unreadable, unreadable[:5]
    assert not unexplained, unexplained[:5]
    assert not states_differing
    assert comparison.lost == 0, comparison.examples[:5]
    assert comparison.duplicate_metric_rows == 0
