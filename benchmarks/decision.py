"""Latency from an eval event's XADD to its decision being readable by the job's pod user.

The closed loop (issue 11): a pod's callback publishes an evaluation and waits for the
scorer's decision covering it (``score:<step>`` in ``ckpt:{<job>}:decision``, holding that
evaluation's ``eval_loss``). The background load is the latency group's (a load generator
process publishing 1,000 events/s over 20 jobs); beside it, a few probe jobs behave as pods:
each has its own ACL user made as ``register --pod-credentials`` makes it, and one connection
as that user, publishes a ``train_log`` and then an ``eval`` with XADD, and polls its
decision with HMGET every ``POLL_S`` until the score of that evaluation is there. The
latency runs from just before the eval's XADD to the read that shows it, on one clock
(``perf_counter``), then the probe pauses a random while, as training would between
evaluations, and goes on.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import redis

from producer.events import build_event, encode_event
from producer.wire import (
    EVENT_FIELD,
    decision_field,
    decision_key,
    decode_decision_entry,
    stream_key,
)

from . import latency
from .common import Context, Figure, percentile
from .pipeline import BenchPipeline, finish_loadgen, start_loadgen

NAMES = ("decision_latency_p50_ms", "decision_latency_p99_ms")
POLL_S = 0.0005
TIMEOUT_S = 10.0  # the callback's default decision_timeout_s: a slower decision is a miss
PAUSE_S = (0.1, 0.4)  # between a probe's evaluations; random, so probes do not beat with the pump


def sizes(quick: bool) -> dict[str, Any]:
    """The latency group's load, plus the probe jobs."""
    return {**latency.sizes(quick), "probes": 2}


def run(ctx: Context) -> list[Figure]:
    from ckpt_pipeline.cli_base import create_pod_credentials
    from scorer_worker.settings import Settings

    size = ctx.sizes["decision"]
    jobs = [f"lat-{i:03d}" for i in range(size["jobs"])]
    probes = [f"dec-{i:03d}" for i in range(size["probes"])]
    with BenchPipeline(ctx, "decision") as pipeline:
        pipeline.register(jobs + probes)
        pipeline.start_processes()
        # As `register --pod-credentials` does: recorded in the job's meta, so the pump's
        # reconciliation keeps the users (it deletes pod users no job records).
        settings = Settings(redis_url=pipeline.url)
        credentials = [create_pod_credentials(settings, pipeline.client, job) for job in probes]
        stop = threading.Event()
        results: list[dict[str, Any]] = [{} for _ in probes]
        threads = [
            threading.Thread(
                target=_probe, args=(creds.job_id, creds.redis_url, stop, results[i], i),
                name=f"probe-{creds.job_id}", daemon=True,
            )
            for i, creds in enumerate(credentials)
        ]  # fmt: skip
        process, output = start_loadgen(
            ctx, pipeline, "loadgen", jobs=jobs, rate_per_job=size["events_per_s"] / len(jobs),
            duration_s=size["duration_s"], record="none", eval_every=size["eval_every"],
        )  # fmt: skip
        for thread in threads:
            thread.start()
        try:
            summary = finish_loadgen(ctx, process, output, size["duration_s"] + 60)
        finally:
            stop.set()
            for thread in threads:
                thread.join(TIMEOUT_S + 5)
        pipeline.check_alive()
    errors = [r["error"] for r in results if r.get("error")]
    if errors:
        raise RuntimeError(f"a probe failed: {errors[0]}")
    ms = [lag * 1000 for r in results for lag in r["lags_s"]]
    missed = sum(r["missed"] for r in results)
    ctx.details["decision"] = {
        "background_events_published": summary["sent"],
        "background_rate_per_s": round(summary["rate"]),
        "probe_evals_measured": len(ms),
        "probe_evals_missed_after_timeout": missed,
        "p50_p90_p99_max_ms": [round(percentile(ms, q), 2) for q in (50, 90, 99, 100)],
        "hmget_polls_per_eval": round(
            sum(r["polls"] for r in results) / max(1, len(ms) + missed), 1
        ),
    }
    # A decision that never came within the timeout counts as infinitely late.
    ms += [float("inf")] * missed
    note = (
        f"{len(ms):,} evals of {len(probes)} probe jobs (pod ACL user, HMGET every "
        f"{POLL_S * 1000:g} ms) beside {len(jobs)} jobs at {round(summary['rate']):,} events/s"
    )
    return [
        Figure("decision_latency_p50_ms", percentile(ms, 50), "ms", "info", None, note),
        Figure("decision_latency_p99_ms", percentile(ms, 99), "ms", "<=", 100, note),
    ]


def _probe(job_id: str, url: str, stop: threading.Event, result: dict, seed: int) -> None:
    """Act as a pod: publish evaluations and time how long their decisions take to read."""
    lags: list[float] = []
    result.update(lags_s=lags, missed=0, polls=0)
    pause = random.Random(seed)
    try:
        with redis.Redis.from_url(url) as pod:  # the pod user's own connection
            events, decision = stream_key(job_id), decision_key(job_id)
            begin = {"max_steps": 10**6, "num_train_epochs": 1, "resumed_from_step": 0}
            pod.xadd(events, {EVENT_FIELD: _event("train_begin", job_id, 0, info=begin)})
            step = 0
            while not stop.is_set():
                step += 10
                eval_loss = 2.0 + step / 100000  # distinct per eval: the decision names it
                pod.xadd(events, {EVENT_FIELD: _event("train_log", job_id, step, loss=1.5)})
                field = decision_field(step)
                started = time.perf_counter()
                pod.xadd(events, {EVENT_FIELD: _event("eval", job_id, step, eval_loss=eval_loss)})
                deadline = started + TIMEOUT_S
                while True:
                    (raw,) = pod.hmget(decision, [field])
                    result["polls"] += 1
                    if raw is not None and decode_decision_entry(raw)[1] == eval_loss:
                        lags.append(time.perf_counter() - started)
                        break
                    if time.perf_counter() > deadline:
                        result["missed"] += 1
                        break
                    time.sleep(POLL_S)
                stop.wait(pause.uniform(*PAUSE_S))
    except Exception as exc:  # reported by run(): a probe must not die silently
        result["error"] = f"{type(exc).__name__}: {exc}"


def _event(kind: str, job_id: str, step: int, info: dict | None = None, **metrics: float) -> str:
    return encode_event(build_event(kind, job_id, step, step / 100, metrics or None, info))
