"""``ckpt-pipeline``: the command line of the pipeline, and its composition root.

The shell wires the components together (producer, scorer, sink, remote); each command
imports what it needs when it runs, so ``ckpt-pipeline pump`` does not load torch. The
``remote`` commands live in :mod:`ckpt_pipeline.remote_commands`, the dead-letter commands in
:mod:`ckpt_pipeline.deadletters_cli`, and what they share in :mod:`ckpt_pipeline.cli_base`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from producer.redaction import terminal_safe
from scorer_worker.errors import PipelineError
from scorer_worker.settings import Settings

from .cli_base import (
    _data,
    _dump,
    _finite,
    _Group,
    _pod_lifecycle,
    _redis,
    _settings,
    create_pod_credentials,
)

# How long replay waits for the publisher: for room in its queue, then for the last batches.
REPLAY_WAIT_S = 60.0


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """Checkpoint pipeline: pick the best checkpoint of every fine-tuning run."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("job_id")
@click.argument("job_token")
@click.option("--create-row", is_flag=True, help="Insert the pending row in the SQLite sink.")
@click.option("--model-name", default="", help="model_name of the created row.")
@click.option(
    "--pod-credentials",
    is_flag=True,
    help="Also create the pod's Redis user (XADD its stream, HMGET its decision) and print "
    "its redis_url as JSON.",
)
def register(
    job_id: str, job_token: str, create_row: bool, model_name: str, pod_credentials: bool
) -> None:
    """Register JOB_ID with its JOB_TOKEN so the pipeline scores it and writes its row."""
    from scorer_worker.registry import register_job

    # Everything is checked before anything is written: a refused id or token leaves no row,
    # no registration and no key behind.
    _check_job_id(job_id)
    if not job_token:
        raise ValueError("the job token must not be empty")
    settings = _settings()
    redis = _redis(settings)
    redis.ping()  # an unreachable Redis is reported here, before the row is inserted
    created = create_row and _create_row(settings, job_id, job_token, model_name)
    try:
        data = _data(settings, redis)
        register_job(redis, job_id, job_token, data=data)
    except RedisError:
        if created:  # Redis refused the registration (out of memory...): undo the new row
            _drop_created_row(settings, job_id, job_token)
        raise
    if pod_credentials:
        credentials = create_pod_credentials(settings, data, job_id)  # users on the data side
        click.echo(json.dumps({**credentials.masked(), "redis_url": credentials.redis_url}))
        return
    click.echo(f"registered {job_id}")


def _check_job_id(job_id: str) -> None:
    from producer.wire import is_valid_job_id

    if not is_valid_job_id(job_id):
        # repr: a control character or an escape sequence is shown, not played to the terminal
        raise ValueError(f"invalid job id {job_id!r}: expected 1-64 of [A-Za-z0-9_-]")


def _create_row(settings: Settings, job_id: str, job_token: str, model_name: str) -> bool:
    """Insert the pending row; return True when this call inserted it."""
    from sink.writers import writer_from_settings
    from sink.writers.sqlite import SqliteWriter

    writer = writer_from_settings(settings)
    try:
        if not isinstance(writer, SqliteWriter):
            raise click.UsageError(
                "--create-row works with the SQLite sink only (CKPT_SINK=sqlite:///...)"
            )
        return writer.create_job(job_id, job_token, model_name=model_name or "unknown")
    finally:
        writer.close()


def _drop_created_row(settings: Settings, job_id: str, job_token: str) -> None:
    from sink.writers import writer_from_settings

    writer = writer_from_settings(settings)
    try:
        writer.delete_pending_job(job_id, job_token)
    finally:
        writer.close()


@main.command()
@click.argument("job_id")
def unregister(job_id: str) -> None:
    """Remove JOB_ID from the active jobs and delete its pod user (state and row stay)."""
    from scorer_worker.registry import unregister_job

    _check_job_id(job_id)
    settings = _settings()
    redis = _redis(settings)
    unregister_job(redis, job_id, data=_data(settings, redis))
    click.echo(f"unregistered {job_id}")


@main.command()
@click.argument("job_id")
@click.argument("output_dir", type=click.Path(exists=True, file_okay=False))
def replay(job_id: str, output_dir: str) -> None:
    """Publish the events of a finished run in OUTPUT_DIR as JOB_ID (back-fills old runs)."""
    from producer import EventPublisher
    from scorer_worker.connection import probe
    from scorer_worker.history import run_events

    _check_job_id(job_id)
    settings = _settings()
    events = run_events(job_id, output_dir, ts=time.time())  # the whole folder is read first
    probe(settings)  # Redis down: say so now, rather than spool the whole run
    publisher = EventPublisher(job_id, settings.data_url)
    for event in events:
        # Waits while the queue is full: a long run has more events than the queue holds, and
        # publish() (made for the training loop, which must never wait) would drop them.
        publisher.publish_waiting(event, timeout_s=REPLAY_WAIT_S)
    publisher.close(timeout_s=REPLAY_WAIT_S)
    if publisher.dropped:
        raise PipelineError(
            f"replay of {job_id}: {publisher.dropped} of {len(events)} events were not delivered"
            " (the publisher did not keep up); replaying again is safe"
        )
    if publisher.spooled:
        click.echo(
            f"replay of {job_id}: {publisher.spooled} of {len(events)} events not delivered"
            f" (Redis became unreachable), kept in {publisher.spool.directory}; deliver them"
            f" with `ckpt-pipeline spool flush {publisher.spool.directory}`",
            err=True,
        )
        sys.exit(1)
    click.echo(f"replayed {len(events)} events for {job_id}: sent")


@main.command()
@click.option("--burst", is_flag=True, help="One pass that enqueues whatever is behind, then exit.")
@click.option(
    "--shard", default="0/1", show_default=True, help="This pump's shard, as INDEX/COUNT."
)
def pump(burst: bool, shard: str) -> None:
    """Run the reconciler that enqueues drains and flushes for jobs that are behind."""
    from scorer_worker.pump import Pump
    from sink.tasks import FLUSH

    from .acl_commands import with_pod_users
    from .worker import tune_gc

    index, _, count = shard.partition("/")
    settings = _settings()
    redis = _redis(settings, ride_out_outages=not burst)
    lifecycle = _pod_lifecycle(redis, background=not burst)
    data = _data(settings, redis, ride_out_outages=not burst)
    after_pass = with_pod_users(lifecycle, settings, redis, data)  # + the pods' ACL users
    reconciler = Pump(
        redis, settings, int(index), int(count or 1), after_pass=after_pass, flush=FLUSH,
        data=data,
    )  # fmt: skip
    if burst:
        result = reconciler.run_once()
        click.echo(
            f"pump: {result.jobs} jobs, {result.drains_enqueued} drains and "
            f"{result.flushes_enqueued} flushes enqueued"
        )
        return
    tune_gc()
    reconciler.run()


@main.command()
@click.option("--burst", is_flag=True, help="Exit when nothing is behind.")
def work(burst: bool) -> None:
    """Run the pump and a scoring and a sink worker in one process."""
    from scorer_worker.connection import PROBE_TIMEOUT_S, probe

    from .acl_commands import with_pod_users
    from .runner import run_all_in_one

    settings = _settings()
    try:
        probe(settings)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        if burst:  # one pass was asked for: riding out an outage silently would look hung
            raise RedisConnectionError(f"no answer within {PROBE_TIMEOUT_S:g} s: {exc}") from None
        click.echo(
            f"warning: Redis is unreachable ({exc}); waiting for it for up to "
            f"{settings.redis_retry_s:g} s (CKPT_REDIS_RETRY_S)",
            err=True,
        )
    redis = _redis(settings, ride_out_outages=True)
    lifecycle = _pod_lifecycle(redis, background=not burst)  # on_end, as the pump applies it
    data = _data(settings, redis, ride_out_outages=True)
    after_pass = with_pod_users(lifecycle, settings, redis, data)  # + the pods' ACL users
    passes = run_all_in_one(redis, settings, burst=burst, after_pass=after_pass, data=data)
    if burst:
        click.echo(f"work: idle after {passes} passes")


@main.command()
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--profile", default="default", show_default=True, help="Scoring profile.")
def checkpoints(directory: str, as_json: bool, profile: str) -> None:
    """List the checkpoints of a run folder with their scores; mark the best and the latest."""
    from scorer_worker.scoring import get_profile

    from .listing import list_checkpoints

    listing = list_checkpoints(directory, get_profile(profile))
    if as_json:
        click.echo(_dump(listing))
        return
    if not listing:
        click.echo(f"no checkpoint-* folders in {directory}")
        return
    click.echo(
        f"{'checkpoint':<18}{'epoch':>7}{'eval_loss':>11}{'train_loss':>12}{'score':>10}  flags"
    )
    for item in listing:
        flags = " ".join(
            f for f, on in (("best", item["is_best"]), ("latest", item["is_latest"])) if on
        )
        click.echo(
            f"{item['name']:<18}{_fmt(item['epoch'], 2):>7}{_fmt(item['eval_loss']):>11}"
            f"{_fmt(item['train_loss']):>12}{_fmt(item['score']):>10}  {flags}"
        )


def _unknown(report: dict[str, Any]) -> bool:
    # A typo in the id must not read as "a job with nothing to report".
    pipeline = report.get("pipeline") or {}
    traces = ("registered", "active", "lag_events", "state_version", "dead_letters", "decision")
    return report.get("row") is None and not any(pipeline.get(name) for name in traces)


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@main.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(job_id: str, as_json: bool) -> None:
    """Show JOB_ID's row and its pipeline state (lag, versions, dead letters, sink errors)."""
    from .status import job_status

    _check_job_id(job_id)
    settings = _settings()
    redis = _redis(settings)
    report = job_status(settings, _data(settings, redis), job_id, queue=redis)
    if _unknown(report):
        raise ValueError(
            f"unknown job {job_id!r}: not registered, and no events, state, dead letters or row"
        )
    if as_json:
        click.echo(_dump(report))
        return
    click.echo(f"job {job_id}")
    for section in ("pipeline", "picks", "row"):
        click.echo(f"  {section}:")
        for name, value in (report.get(section) or {}).items():
            # Producer text (errors, folders) must not drive the operator's terminal.
            shown = terminal_safe(str(_finite(value)), keep_newlines=False)
            click.echo(f"    {name:<28} {shown}")


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), default="ckpt-demo", show_default=True)
def demo(workdir: str) -> None:
    """Fine-tune a tiny model until it overfits and watch the pipeline pick the best checkpoint."""
    from .demo import run_demo

    run_demo(Path(workdir))


@main.command()
@click.argument("database_url")
def migrate(database_url: str) -> None:
    """Apply the additive, idempotent SQL migrations to DATABASE_URL (PostgreSQL/Supabase)."""
    from sink.migrate import run_migrations

    applied = run_migrations(database_url)
    click.echo(f"applied: {', '.join(applied)}" if applied else "up to date: nothing to apply")


@main.group()
def spool() -> None:
    """Producer spool files: events a training process could not deliver."""


@spool.command("flush")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--timeout-s", default=60.0, show_default=True, help="Time allowed per job.")
def spool_flush(directory: str, timeout_s: float) -> None:
    """Deliver every job's spooled events in DIRECTORY to Redis, in order."""
    from producer.publisher import flush_spool_dir

    settings = _settings()
    _check_spool_dir(directory)
    results = flush_spool_dir(directory, settings.data_url, timeout_s=timeout_s)
    if not results:
        click.echo(f"no spool files in {directory}")
    for job_id, left in results.items():
        click.echo(f"{job_id}: " + ("delivered" if left == 0 else f"{left} bytes still spooled"))
    if any(results.values()):
        sys.exit(1)


def _check_spool_dir(directory: str) -> None:
    """Refuse a folder holding a damaged spool before anything is sent; warn of a damaged
    offset file (the spool is then delivered again from its start, which is safe)."""
    from producer.spool import Spool, spool_files
    from producer.wire import is_valid_job_id

    damaged = []
    for job_id, path in spool_files(directory):
        if not is_valid_job_id(job_id):
            damaged.append(f"{path}: not a spool file name (not a job id)")
            continue
        spool = Spool(directory, job_id)
        damaged.extend(spool.damage(max_problems=1))
        if problem := spool.offset_problem():
            shown = terminal_safe(problem, keep_newlines=False)
            click.echo(f"warning: {shown}; delivering the whole spool again", err=True)
    if len(damaged) == 1:
        raise PipelineError(f"{damaged[0]}: nothing delivered")
    if damaged:
        for problem in damaged:
            click.echo(f"error: {terminal_safe(problem, keep_newlines=False)}", err=True)
        raise PipelineError(f"nothing delivered: {len(damaged)} damaged spool files above")


def _register_command_groups() -> None:
    from .acl_commands import acl
    from .deadletters_cli import dead
    from .remote_commands import remote

    main.add_command(acl)
    main.add_command(dead)
    main.add_command(remote)


_register_command_groups()

if __name__ == "__main__":
    main()
