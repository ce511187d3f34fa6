"""Shared fixtures: a private redis-server (and, for the cluster variants, a private Redis
Cluster) per session, clean databases per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ckpt_pipeline.testing.local_cluster import LocalCluster
from ckpt_pipeline.testing.local_redis import LocalRedis
from scorer_worker.settings import Settings
from scorer_worker.topology import masters


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedis]:
    """A private redis-server on a random port, for the whole session."""
    server = LocalRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A private Redis Cluster (3 masters, 3 replicas) for the session's cluster variants."""
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def cluster_client(redis_cluster: LocalCluster) -> Iterator[redis.RedisCluster]:
    """A cluster client of the private cluster, every master emptied before each test."""
    client = redis_cluster.client()
    flush_cluster(client)
    yield client
    client.close()


def flush_cluster(client: redis.RedisCluster) -> None:
    """Empty every master of the cluster (FLUSHALL is per node)."""
    for master in masters(client):
        master.flushall()


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    """A client of the private server, emptied before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite sink URL in the test's temporary folder."""
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def pipeline_env(
    monkeypatch: pytest.MonkeyPatch, redis_server: LocalRedis, sqlite_url: str
) -> Settings:
    """Point REDIS_URL and CKPT_SINK at the private servers; return the settings."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("CKPT_SINK", sqlite_url)
    monkeypatch.setenv(
        "CKPT_SPOOL_DIR", str(Path(sqlite_url.removeprefix("sqlite:///")).parent / "spool")
    )
    return Settings.from_env(os.environ)


@pytest.fixture
def cluster_env(
    monkeypatch: pytest.MonkeyPatch, pipeline_env: Settings, cluster_client: redis.RedisCluster,
    redis_cluster: LocalCluster,
) -> Settings:  # fmt: skip
    """``pipeline_env`` with the data side on the private cluster (CKPT_DATA_REDIS_URL)."""
    monkeypatch.setenv("CKPT_DATA_REDIS_URL", redis_cluster.url)
    return Settings.from_env(os.environ)
