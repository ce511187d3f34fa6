"""Fixtures of the chaos experiments: private servers that can be stopped and restarted, and
the pipeline's real processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ckpt_pipeline.testing.local_cluster import LocalCluster
from ckpt_pipeline.testing.local_postgres import LocalPostgres
from ckpt_pipeline.testing.local_redis import LocalRedis, free_port
from ckpt_pipeline.testing.pipeline import Pipeline
from sink.migrate import run_migrations

from .harness import probe_options


@pytest.fixture(scope="session")
def chaos_postgres() -> Iterator[LocalPostgres]:
    """One private PostgreSQL server for the chaos session, on a fixed port (restartable)."""
    server = LocalPostgres(port=free_port()).start()
    yield server
    server.remove()


@pytest.fixture
def make_database(chaos_postgres: LocalPostgres) -> Callable[[str], str]:
    """Create a fresh database with the migrations applied; returns its URL."""

    def make(prefix: str = "chaos") -> str:
        url = chaos_postgres.create_database(f"{prefix}_{uuid.uuid4().hex[:12]}")
        run_migrations(url)
        return url

    return make


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., LocalRedis]]:
    """Start private redis-servers with AOF on and a fixed port, so a restart keeps the URL."""
    servers: list[LocalRedis] = []

    def make(
        name: str = "redis", extra_args: list[str] | None = None, bind: tuple[str, ...] = ()
    ) -> LocalRedis:
        server = LocalRedis(
            tmp_path / name,
            appendonly=True,
            port=free_port(),
            extra_args=extra_args,
            bind=("127.0.0.1", *bind),
        )
        servers.append(server.start())
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., LocalCluster]]:
    """Start private Redis Clusters (3 masters, 3 replicas, AOF ``everysec``) for the data side."""
    clusters: list[LocalCluster] = []

    def make(name: str = "cluster") -> LocalCluster:
        cluster = LocalCluster(tmp_path / name)
        clusters.append(cluster.start())
        return cluster

    yield make
    for cluster in clusters:
        cluster.stop()


@pytest.fixture
def chaos_redis(make_redis: Callable[..., LocalRedis]) -> LocalRedis:
    """The experiment's redis-server (AOF on, fixed port)."""
    return make_redis("redis")


@pytest.fixture
def client(chaos_redis: LocalRedis) -> Iterator[redis.Redis]:
    """A client of the experiment's redis-server."""
    connection = redis.Redis.from_url(chaos_redis.url, socket_timeout=10)
    yield connection
    connection.close()


@pytest.fixture
def make_pipeline(tmp_path: Path) -> Iterator[Callable[..., Pipeline]]:
    """Start the real processes (the Procfile's commands) on a given Redis and sink; every
    one still running is stopped at the end."""
    started: list[Pipeline] = []

    def make(
        redis_url: str,
        sink_url: str,
        *,
        probes: bool = False,
        scoring: int = 2,
        sink: int = 2,
        data_url: str | None = None,
        role_prefix: dict[str, list[str]] | None = None,
        role_env: dict[str, dict[str, str]] | None = None,
        **tunables: object,
    ) -> Pipeline:
        probe_dir = tmp_path / "probes" if probes else None
        if probe_dir is not None:
            probe_dir.mkdir(exist_ok=True)
        pipeline = Pipeline(
            tmp_path,
            redis_url=redis_url,
            data_url=data_url,
            sink_url=sink_url,
            scoring=scoring,
            sink=sink,
            log_dir=tmp_path / "logs",
            role_prefix=role_prefix,
            role_env=role_env,
            **probe_options(probe_dir, tunables),
        )
        started.append(pipeline)
        return pipeline.start()

    yield make
    for pipeline in started:
        pipeline.close()
