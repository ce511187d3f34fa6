"""Operator tools for dead letters: list, show, requeue, purge (``ckpt-pipeline dead``).

A dead letter is named ``<job>/<entry id>``, as ``dead list`` prints it.
"""

from __future__ import annotations

from typing import Any

import click

from producer.redaction import terminal_safe
from producer.wire import EVENT_FIELD, is_valid_job_id
from scorer_worker import keys
from scorer_worker.deadletter import (
    DeadLetter,
    dead_letter_jobs,
    delete_dead_letters,
    fetch_dead_letter,
    list_dead_letters,
    parse_ref,
)


@click.group()
def dead() -> None:
    """Inspect and act on dead letters (events that failed validation or scoring)."""


def _queue() -> Any:
    """The queue side (``REDIS_URL``): the job index."""
    from scorer_worker.connection import connect
    from scorer_worker.settings import Settings

    return connect(Settings.from_env())


def _redis() -> Any:
    """The data side, where each job's dead letters live (beside its state)."""
    from scorer_worker.connection import connect_data
    from scorer_worker.settings import Settings

    return connect_data(Settings.from_env())


def _job_option(job_id: str | None) -> str | None:
    if job_id is not None and not is_valid_job_id(job_id):
        raise click.BadParameter(f"{job_id!r} is not a job id", param_hint="--job")
    return job_id


@dead.command("list")
@click.option("--job", "job_id", help="Only this job's dead letters.")
@click.option(
    "--count",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many, newest first.",
)
def list_(job_id: str | None, count: int) -> None:
    """List dead letters, newest first: reference (job/entry id), payload size and reason."""
    letters = list_dead_letters(_redis(), count=count, job_id=_job_option(job_id))
    if not letters:
        click.echo("no dead letters")
    for ref, letter in letters:
        reason = terminal_safe(letter.reason[:100], keep_newlines=False)
        click.echo(f"{ref}  {letter.payload_bytes:>7}B  {reason}")


@dead.command()
@click.argument("ref")
def show(ref: str) -> None:
    """Show one dead letter (REF is job/entry id) in full: payload as kept, secrets redacted."""
    letter = _fetch(_redis(), ref)
    for name, value in letter.fields().items():
        click.echo(f"{name}: {terminal_safe(value, keep_newlines=False)}")


@dead.command()
@click.argument("refs", nargs=-1)
@click.option("--job", "job_id", help="Requeue every dead letter of this job.")
def requeue(refs: tuple[str, ...], job_id: str | None) -> None:
    """Append dead letters' payloads to their job's stream again (after a fix), and drop them.

    A payload cut at the size cap or with a redacted secret cannot be requeued faithfully and
    is refused.
    """
    redis = _redis()
    targets = _targets(redis, refs, _job_option(job_id))
    for ref, letter in targets:
        problem = _unrequeueable(letter)
        if problem:
            click.echo(f"{ref}: not requeued ({problem})", err=True)
            continue
        job, entry_id = parse_ref(ref)
        pipe = redis.pipeline(transaction=False)  # one job: one slot
        pipe.xadd(keys.events(job), {EVENT_FIELD: letter.payload})
        pipe.xdel(keys.dead(job), entry_id)
        pipe.execute()
        _queue().sadd(keys.JOBS, job)  # the job index is on the queue side
        click.echo(f"{ref}: requeued to {job}")


@dead.command()
@click.argument("refs", nargs=-1)
@click.option("--job", "job_id", help="Purge every dead letter of this job.")
@click.option("--all", "purge_all", is_flag=True, help="Purge every dead letter of every job.")
def purge(refs: tuple[str, ...], job_id: str | None, purge_all: bool) -> None:
    """Delete dead letters for good."""
    redis = _redis()
    if purge_all:
        jobs = dead_letter_jobs(redis)
        count = sum(int(redis.xlen(keys.dead(job))) for job in jobs)
        for job in jobs:
            redis.delete(keys.dead(job))
        click.echo(f"purged {count} dead letters")
        return
    targets = _targets(redis, refs, _job_option(job_id))
    deleted = delete_dead_letters(redis, [ref for ref, _ in targets])
    click.echo(f"purged {deleted} dead letters")


def _targets(redis: Any, refs: tuple[str, ...], job_id: str | None) -> list[tuple[str, DeadLetter]]:
    if bool(refs) == bool(job_id):
        raise click.UsageError("give dead letter references (job/entry id) or --job JOB")
    if job_id:
        return list_dead_letters(redis, count=100_000, job_id=job_id)
    return [(ref, _fetch(redis, ref)) for ref in refs]


def _fetch(redis: Any, ref: str) -> DeadLetter:
    letter = fetch_dead_letter(redis, ref)
    if letter is None:
        raise click.UsageError(f"no dead letter {ref}")
    return letter


def _unrequeueable(letter: DeadLetter) -> str | None:
    if not is_valid_job_id(letter.job_id):
        return "no valid job id"
    if letter.redacted:
        return "payload had a secret redacted"
    if letter.payload_bytes > len(letter.payload.encode("utf-8", errors="replace")):
        return "payload was cut at the size cap"
    return None
