"""RetryingRedis: the connection class the workers run with, so a Redis restart does not end
them (RQ quits on a Redis error met while running a task)."""

from __future__ import annotations

import threading
import time

import pytest

from ckpt_pipeline.testing.local_redis import LocalRedis
from scorer_worker.connection import RetryingRedis, connect, outage_retry
from scorer_worker.settings import Settings

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("seconds", [0.5, 5, 60])
def test_the_retry_policy_waits_about_the_configured_time(seconds: float) -> None:
    retry = outage_retry(seconds)
    waits = [retry._backoff.compute(n) for n in range(1, retry.get_retries() + 1)]
    assert seconds <= sum(waits) < seconds + 1.0
    assert max(waits) <= 1.0  # service resumes within a second of Redis's return


def test_commands_wait_through_a_restart_instead_of_failing(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CKPT_REDIS_RETRY_S", "20")
    server = LocalRedis(tmp_path, appendonly=True).start()
    try:
        client = RetryingRedis.from_url(server.url)
        client.set("k", "before")
        server.stop()
        restart = threading.Timer(3.0, server.start)
        restart.start()
        start = time.monotonic()
        assert client.get("k") == b"before"  # waited for the restarted server (AOF kept it)
        assert 2.5 < time.monotonic() - start < 10
        restart.join()
        one_shot = connect(Settings(redis_url=server.url))
        assert not isinstance(one_shot, RetryingRedis)  # CLI commands fail fast instead
        assert isinstance(connect(Settings(redis_url=server.url), ride_out_outages=True),
                          RetryingRedis)  # fmt: skip
    finally:
        server.stop()
