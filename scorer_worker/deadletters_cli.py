"""Operator tools for dead letters: list, show, requeue, purge (``ckpt-pipeline dead``)."""

from __future__ import annotations

from typing import Any

import click

from producer.wire import EVENT_FIELD, is_valid_job_id

from . import keys
from .deadletter import REDACTED, DeadLetter, list_dead_letters


@click.group()
def dead() -> None:
    """Inspect and act on dead letters (events that failed validation or scoring)."""


def _redis() -> Any:
    from .connection import connect
    from .settings import Settings

    return connect(Settings.from_env())


@dead.command("list")
@click.option("--job", "job_id", help="Only this job's dead letters.")
@click.option("--count", default=50, show_default=True, help="How many, newest first.")
def list_(job_id: str | None, count: int) -> None:
    """List dead letters, newest first: id, job, payload size and reason."""
    letters = list_dead_letters(_redis(), count=count, job_id=job_id)
    if not letters:
        click.echo("no dead letters")
    for entry_id, letter in letters:
        click.echo(
            f"{entry_id}  {letter.job_id:<24} {letter.payload_bytes:>7}B  {letter.reason[:100]}"
        )


@dead.command()
@click.argument("entry_id")
def show(entry_id: str) -> None:
    """Show one dead letter in full (its payload as kept, secrets redacted)."""
    letter = _fetch(_redis(), entry_id)
    for name, value in letter.fields().items():
        click.echo(f"{name}: {value}")


@dead.command()
@click.argument("entry_ids", nargs=-1)
@click.option("--job", "job_id", help="Requeue every dead letter of this job.")
def requeue(entry_ids: tuple[str, ...], job_id: str | None) -> None:
    """Append dead letters' payloads to their job's stream again (after a fix), and drop them.

    A payload cut at the size cap or with a redacted secret cannot be requeued faithfully and
    is refused.
    """
    redis = _redis()
    targets = _targets(redis, entry_ids, job_id)
    for entry_id, letter in targets:
        problem = _unrequeueable(letter)
        if problem:
            click.echo(f"{entry_id}: not requeued ({problem})", err=True)
            continue
        pipe = redis.pipeline(transaction=False)
        pipe.xadd(keys.events(letter.job_id), {EVENT_FIELD: letter.payload})
        pipe.sadd(keys.JOBS, letter.job_id)
        pipe.xdel(keys.DEAD, entry_id)
        pipe.execute()
        click.echo(f"{entry_id}: requeued to {letter.job_id}")


@dead.command()
@click.argument("entry_ids", nargs=-1)
@click.option("--job", "job_id", help="Purge every dead letter of this job.")
@click.option("--all", "purge_all", is_flag=True, help="Purge every dead letter.")
def purge(entry_ids: tuple[str, ...], job_id: str | None, purge_all: bool) -> None:
    """Delete dead letters for good."""
    redis = _redis()
    if purge_all:
        count = redis.xlen(keys.DEAD)
        redis.delete(keys.DEAD)
        click.echo(f"purged {count} dead letters")
        return
    targets = _targets(redis, entry_ids, job_id)
    if targets:
        redis.xdel(keys.DEAD, *[entry_id for entry_id, _ in targets])
    click.echo(f"purged {len(targets)} dead letters")


def _targets(
    redis: Any, entry_ids: tuple[str, ...], job_id: str | None
) -> list[tuple[str, DeadLetter]]:
    if bool(entry_ids) == bool(job_id):
        raise click.UsageError("give dead letter ids or --job JOB (one of them)")
    if job_id:
        return list_dead_letters(redis, count=100_000, job_id=job_id)
    return [(entry_id, _fetch(redis, entry_id)) for entry_id in entry_ids]


def _fetch(redis: Any, entry_id: str) -> DeadLetter:
    found = redis.xrange(keys.DEAD, entry_id, entry_id)
    if not found:
        raise click.UsageError(f"no dead letter {entry_id}")
    return DeadLetter.from_fields(found[0][1])


def _unrequeueable(letter: DeadLetter) -> str | None:
    if not is_valid_job_id(letter.job_id):
        return "no valid job id"
    if letter.payload_bytes > len(letter.payload.encode("utf-8", errors="replace")):
        return "payload was cut at the size cap"
    if REDACTED.decode() in letter.payload:
        return "payload had a secret redacted"
    return None
