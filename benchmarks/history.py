"""Cost of applying one new eval to a job with 10,000 evals versus one with 10.

Two jobs are built by draining their streams: one with 10 evals, one with 10,000 (each eval
after a train log at the same step). Then, alternating between them, one new eval is XADDed
and the work the workers do for it is timed in this process: ``drain_job`` (what
``rq worker scoring`` runs) then ``flush_job`` (what ``rq worker sink`` runs) with the SQLite
writer and, where PostgreSQL is installed, with the PostgreSQL writer. The figure is the
ratio of the medians (SQLite); the PostgreSQL ratio is shown beside it.
"""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

from ckpt_pipeline.testing.events import JobEvents
from producer.wire import EVENT_FIELD, stream_key

from .common import TOKEN, Context, Figure
from .pipeline import BenchPipeline

NAMES = ("history_cost_ratio",)


def sizes(quick: bool) -> dict[str, Any]:
    return {"small_evals": 10, "large_evals": 10_000, "rounds": 15 if quick else 40}


def run(ctx: Context) -> list[Figure]:
    from scorer_worker.drain import drain_job
    from scorer_worker.settings import Settings
    from sink.flush import flush_job
    from sink.writers.sqlite import SqliteWriter

    size = ctx.sizes["history"]
    small, large = str(uuid.uuid4()), str(uuid.uuid4())
    with BenchPipeline(ctx, "history", scoring=0, sink=0, pump=False) as pipeline:
        settings = Settings(redis_url=pipeline.url, sink_url=pipeline.sink_url)
        if "flush_min_interval_s" in Settings.model_fields:
            # The cost of one write is measured here, not the write coalescing.
            settings = settings.model_copy(update={"flush_min_interval_s": 0.0})
        pipeline.register([small, large])
        sqlite = SqliteWriter(pipeline.db_path)
        generators = {}
        build_s = {}
        for job, evals in ((small, size["small_evals"]), (large, size["large_evals"])):
            generators[job] = JobEvents(job, eval_every=1, separate_evals=True, max_steps=10**6)
            start = time.monotonic()
            _publish(pipeline.client, job, generators[job].take(1 + 2 * evals))
            _drain_all(drain_job, pipeline.client, job, settings)
            flush_job(pipeline.client, job, settings, sqlite)
            build_s[job] = round(time.monotonic() - start, 2)
        sqlite_costs = _measure(pipeline, settings, generators, sqlite, size["rounds"])
        if ctx.profile_dir is not None:
            _profile(ctx, pipeline, settings, generators, sqlite, {small: "10", large: "10000"})
        state_bytes = {
            job: pipeline.client.memory_usage(f"ckpt:{{{job}}}:state", samples=0)
            for job in generators
        }
        postgres_costs = _postgres(ctx, pipeline, settings, generators, size["rounds"], drain_job)
    figures = []
    detail: dict[str, Any] = {
        "build_s": list(build_s.values()),
        "state_key_bytes": list(state_bytes.values()),
    }
    for writer, costs in (("sqlite", sqlite_costs), ("postgres", postgres_costs)):
        if not costs:
            continue
        medians = {
            part: {job: statistics.median(v) * 1000 for job, v in per.items()}
            for part, per in costs.items()
        }
        for part in ("drain", "flush", "total"):
            detail[f"{writer}_{part}_ms_10_vs_10000"] = [
                round(medians[part][small], 3),
                round(medians[part][large], 3),
            ]
        ratio = medians["total"][large] / medians["total"][small]
        detail[f"{writer}_ratio"] = round(ratio, 2)
        if writer == "sqlite":
            note = (
                f"median of {size['rounds']} alternating rounds: drain+flush "
                f"{medians['total'][small]:.2f} ms at 10 evals, {medians['total'][large]:.2f} ms "
                f"at 10,000 (drain {medians['drain'][large]:.1f}, "
                f"flush {medians['flush'][large]:.1f})"
            )
            figures.append(Figure("history_cost_ratio", ratio, "x", "<=", 1.5, note))
    if "postgres_ratio" in detail:
        figures[0].note += f"; PostgreSQL writer: {detail['postgres_ratio']}x"
    ctx.details["history"] = detail
    return figures


def _publish(client, job: str, events: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for index, event in enumerate(events, start=1):
        pipe.xadd(stream_key(job), {EVENT_FIELD: event})
        if index % 1000 == 0:
            pipe.execute()
    pipe.execute()


def _drain_all(drain_job, client, job: str, settings) -> None:
    for _ in range(1000):
        if drain_job(client, job, settings).caught_up:
            return
    raise RuntimeError(f"job {job} did not drain")


def _measure(
    pipeline: BenchPipeline, settings, generators, writer, rounds: int
) -> dict[str, dict[str, list[float]]]:
    from scorer_worker.drain import drain_job
    from sink.flush import flush_job

    costs: dict[str, dict[str, list[float]]] = {
        p: {j: [] for j in generators} for p in ("drain", "flush", "total")
    }
    jobs = list(generators)
    for round_ in range(rounds + 2):
        order = jobs if round_ % 2 == 0 else jobs[::-1]
        for job in order:
            _kind, event = generators[job]._eval(generators[job].step + 1)[0]
            generators[job].step += 1
            pipeline.client.xadd(stream_key(job), {EVENT_FIELD: event})
            start = time.perf_counter()
            drained = drain_job(pipeline.client, job, settings)
            middle = time.perf_counter()
            flushed = flush_job(pipeline.client, job, settings, writer)
            end = time.perf_counter()
            if drained.events != 1 or flushed.outcome != "written":
                raise RuntimeError(f"unexpected drain {drained} / flush {flushed}")
            if round_ >= 2:  # two warm-up rounds
                costs["drain"][job].append(middle - start)
                costs["flush"][job].append(end - middle)
                costs["total"][job].append(end - start)
    return costs


def _postgres(ctx: Context, pipeline: BenchPipeline, settings, generators, rounds: int, drain_job):
    """The same with the PostgreSQL writer, when PostgreSQL's server binaries are installed."""
    try:
        from ckpt_pipeline.testing.local_postgres import LocalPostgres
    except ImportError:
        return None
    try:
        server = LocalPostgres()
    except (FileNotFoundError, RuntimeError) as exc:
        ctx.details.setdefault("history", {})["postgres_skipped"] = str(exc)
        return None
    ctx.servers.append(server)
    try:
        import psycopg

        from sink.flush import flush_job
        from sink.migrate import run_migrations
        from sink.writers.postgres import PostgresWriter

        server.start()
        url = server.create_database("bench")
        run_migrations(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for job in generators:
                conn.execute(
                    "INSERT INTO local_training_jobs (id, job_token, model_name, status) "
                    "VALUES (%s, %s, 'bench', 'pending')",
                    (job, TOKEN),
                )
        writer = PostgresWriter(url)
        try:
            from scorer_worker import keys

            for job in generators:  # the row is new to this writer: write it all once
                pipeline.client.hdel(keys.meta(job), "written_version")
                flush_job(pipeline.client, job, settings, writer)
            return _measure(pipeline, settings, generators, writer, rounds)
        finally:
            writer.close()
    finally:
        server.remove()
        ctx.servers.remove(server)


def _profile(ctx: Context, pipeline, settings, generators, writer, labels: dict) -> None:
    """cProfile one more drain + flush of each job (``--profile``)."""
    import cProfile

    ctx.profile_dir.mkdir(parents=True, exist_ok=True)
    for job, label in labels.items():
        profiler = cProfile.Profile()
        profiler.enable()
        _measure(pipeline, settings, {job: generators[job]}, writer, 3)
        profiler.disable()
        profiler.dump_stats(ctx.profile_dir / f"history-{label}-evals.pstats")
