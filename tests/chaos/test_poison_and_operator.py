"""Experiments 6 and 7 with the real processes: a poison event (one that makes scoring raise)
is retried a bounded number of times, then dead-lettered while the job goes on; the operator
sees it in ``ckpt-pipeline status`` and ``ckpt-pipeline dead list|show``, requeues it once
the scorer is fixed (the workers redeployed), and purges what is left.

The poison comes from ``inject/sitecustomize.py`` (``CKPT_CHAOS_POISON``): an ``eval`` whose
metrics hold ``chaos_poison`` makes the scoring workers raise, a stand-in for a scoring bug.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import redis
from rq.registry import FailedJobRegistry

from ckpt_pipeline.testing.convergence import wait_converged
from ckpt_pipeline.testing.events import synthetic_events, xadd_many
from ckpt_pipeline.testing.jobs import make_jobs
from ckpt_pipeline.testing.processes import REPO, pipeline_env
from producer.events import build_event, encode_event
from scorer_worker.deadletter import list_dead_letters

from .harness import record, reference_run, setup_jobs
from .rows import compare_runs

pytestmark = pytest.mark.chaos

JOBS, EVENTS_PER_JOB, SEED, POISON_STEP = 5, 300, 6, 55
POISON_MAX_ATTEMPTS = 3


def cli(redis_url: str, sink_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": redis_url, "CKPT_SINK": sink_url, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "ckpt_pipeline.cli", *args],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_poison_event_is_bounded_dead_lettered_visible_and_requeued_after_a_fix(
    make_redis, make_database, make_pipeline
):
    jobs = make_jobs(JOBS, SEED)
    ids = [job.id for job in jobs]
    events = {job.id: [encode_event(e) for e in synthetic_events(job.id, SEED, EVENTS_PER_JOB)]
              for job in jobs}  # fmt: skip
    victim = jobs[0].id
    poison = encode_event(
        build_event("eval", victim, POISON_STEP, POISON_STEP / 40,
                    {"eval_loss": 0.1, "chaos_poison": 1.0}, ts=1.7e9 + 111.5)
    )  # fmt: skip
    with_poison = {**events, victim: [*events[victim][:100], poison, *events[victim][100:]]}

    # References: the jobs without the poison event, and with it applied normally.
    without_db, with_db = make_database("without"), make_database("with")
    for url, stream in ((without_db, events), (with_db, with_poison)):
        reference = make_redis(f"reference-{len(stream[victim])}")
        reference_run(reference.url, url, jobs, stream)
        reference.stop()

    server, db = make_redis("redis"), make_database("poison")
    client = redis.Redis.from_url(server.url)
    setup_jobs(db, client, jobs)
    pipeline = make_pipeline(
        server.url, db, CKPT_CHAOS_POISON="1", poison_max_attempts=POISON_MAX_ATTEMPTS
    )
    for job in jobs:
        xadd_many(client, job.id, with_poison[job.id])
    xadd_many(client, victim, ['{"v": 1, "kind": "eval", "step": '])  # for purge to remove
    converge_s = wait_converged(client, ids, timeout_s=60)

    all_letters = list_dead_letters(client, count=10**6)
    letters = [(i, letter) for i, letter in all_letters if "scoring raised" in letter.reason]
    failed_drains = len(FailedJobRegistry("scoring", connection=client))
    went_on = compare_runs(db, without_db, ids)
    status = cli(server.url, db, "status", victim)
    listed = cli(server.url, db, "dead", "list", "--job", victim)
    dead_id = letters[0][0] if letters else f"{victim}/0-0"
    shown = cli(server.url, db, "dead", "show", dead_id)
    exited_while_poisoned = pipeline.exited()

    # The scorer is fixed: the workers are redeployed without the bug, and the operator
    # requeues the dead letter; the event then counts as if it had never failed.
    pipeline.redeploy("scoring", pipeline_env(server.url, db))
    requeued = cli(server.url, db, "dead", "requeue", dead_id)
    requeue_converge_s = wait_converged(client, ids, timeout_s=60)
    after_fix = compare_runs(db, with_db, ids)
    purged = cli(server.url, db, "dead", "purge", "--job", victim)
    left = len(list_dead_letters(client, count=10**6))

    reason = letters[0][1].reason if letters else ""
    record(
        "6-7-poison-and-operator-tools",
        {
            "title": "Poison event and operator tools",
            "jobs": JOBS,
            "events_published": sum(len(s) for s in with_poison.values()),
            "poison_events": 1,
            "poison_max_attempts": POISON_MAX_ATTEMPTS,
            "dead_letters": len(all_letters),
            "poison_dead_letters": len(letters),
            "dead_letter_reason": reason,
            "failed_drain_attempts_in_rq": failed_drains,
            "converged_seconds": round(converge_s, 1),
            "job_went_on_rows_differing": went_on.lost,
            "status_shows_poison": "chaos poison" in status.stdout,
            "dead_list_shows_it": dead_id in listed.stdout,
            "dead_show_shows_payload": "chaos_poison" in shown.stdout,
            "requeue_output": requeued.stdout.strip(),
            "converged_seconds_after_requeue": round(requeue_converge_s, 1),
            "rows_differing_after_fix_and_requeue": after_fix.lost,
            "purge_output": purged.stdout.strip(),
            "dead_letters_after_purge": left,
            "processes_that_exited_by_themselves": exited_while_poisoned,
            "lost": after_fix.lost,
            "duplicates": after_fix.duplicate_metric_rows,
        },
    )
    print(json.dumps({"reason": reason, "failed_drains": failed_drains}))
    assert len(letters) == 1 and letters[0][1].job_id == victim
    # Given up at the limit; two scoring workers may each count one attempt of the same job
    # at once (both drains fail; the compare-and-set keeps the state right), so the count
    # stops at most one past it (seen once in about five runs: 4).
    gave_up_after = int(re.search(r"gave up after (\d+) attempts", reason).group(1))
    assert POISON_MAX_ATTEMPTS <= gave_up_after <= POISON_MAX_ATTEMPTS + 1, reason
    assert "ArithmeticError: chaos poison" in reason
    assert failed_drains <= POISON_MAX_ATTEMPTS
    assert went_on.lost == 0, went_on.examples[:3]  # every other event of the job counted
    assert "chaos poison" in status.stdout, status.stdout
    assert dead_id in listed.stdout and "chaos_poison" in shown.stdout
    assert not exited_while_poisoned
    assert requeued.returncode == 0 and "requeued" in requeued.stdout
    assert after_fix.lost == 0, after_fix.examples[:3]
    assert after_fix.duplicate_metric_rows == 0
    assert len(all_letters) == 2
    assert purged.returncode == 0 and "purged 1" in purged.stdout and left == 0
