"""The platform's side of a job, as a harness plays it: an id and token, the ``pending`` row
in the sink's database, the registration in Redis.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import redis

from scorer_worker.registry import register_job

SQLITE_PREFIX = "sqlite:///"


@dataclass(frozen=True)
class Job:
    """A job as the platform creates it: its id and the token its row is written with."""

    id: str
    token: str


def make_jobs(count: int, seed: int) -> list[Job]:
    """Deterministic job ids (uuid4 form, as the platform makes them) and tokens."""
    rng = random.Random(seed)
    return [
        Job(str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"tok-{rng.getrandbits(64):016x}")
        for _ in range(count)
    ]


def sqlite_path(sink_url: str) -> Path | None:
    """The file of a ``sqlite:///`` sink URL; None for any other sink."""
    return (
        Path(sink_url.removeprefix(SQLITE_PREFIX)) if sink_url.startswith(SQLITE_PREFIX) else None
    )


def ensure_sqlite_schema(path: Path) -> None:
    """Create the SQLite sink's tables as the sink would."""
    from sink.writers.sqlite import SqliteWriter

    SqliteWriter(path).ensure_schema()


def create_rows(sink_url: str, jobs: Iterable[Job], *, model_name: str) -> None:
    """Insert the platform's ``pending`` rows (id, job_token, model_name), in one transaction.

    The sink is a ``sqlite:///`` file (a row already there is kept) or a PostgreSQL URL (a
    row already there is an error: the platform creates each row once).
    """
    jobs = list(jobs)
    path = sqlite_path(sink_url)
    if path is not None:
        now = datetime.now(UTC).isoformat()
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn, conn:
            conn.executemany(
                "INSERT OR IGNORE INTO local_training_jobs (id, job_token, model_name, "
                "created_at, status) VALUES (?, ?, ?, ?, 'pending')",
                [(job.id, job.token, model_name, now) for job in jobs],
            )
        return
    with psycopg.connect(sink_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO local_training_jobs (id, job_token, status, model_name) "
            "VALUES (%s, %s, 'pending', %s)",
            [(job.id, job.token, model_name) for job in jobs],
        )


def register(client: redis.Redis, jobs: Iterable[Job], *, data: Any = None) -> None:
    """Register each job (its token on the data side, ``data``, by default ``client``; the
    active set on the queue side, ``client``), as ``ckpt-pipeline register`` does."""
    for job in jobs:
        register_job(client, job.id, job.token, data=data)


def setup_jobs(
    sink_url: str, client: redis.Redis, jobs: list[Job], *, model_name: str, data: Any = None
) -> list[Job]:
    """What the platform does for each job: create the row, then register the job."""
    create_rows(sink_url, jobs, model_name=model_name)
    register(client, jobs, data=data)
    return jobs
