"""Redis connections for tasks: the worker's own connection, else one from the settings.

:class:`RetryingRedis` rides out a Redis restart: RQ workers quit when Redis fails them in
the middle of a task (RQ expects a supervisor to restart them), so the Procfile runs them
with ``--connection-class scorer_worker.connection.RetryingRedis`` and they wait for Redis
instead.

``REDIS_URL`` (the queue side) may also be a ``redis+sentinel://`` URL
(:mod:`scorer_worker.sentinel`): every client opened here then follows the primary the
sentinels name, and the retry policy carries commands over a failover.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from rq import get_current_job

from .orphans import ReapingConnection
from .sentinel import close_client, is_sentinel_url, sentinel_client
from .settings import Settings
from .topology import cluster_enabled

RETRY_FIRST_WAIT_S = 0.05
RETRY_MAX_WAIT_S = 1.0


def outage_retry(seconds: float) -> Retry:
    """A redis-py retry policy that keeps retrying connection errors and timeouts (including
    ``LOADING`` while a restarted server reads its AOF) for about ``seconds``.

    Waits double from 0.1 s up to 1 s, so service resumes within a second of Redis's return.
    """
    backoff = ExponentialBackoff(cap=RETRY_MAX_WAIT_S, base=RETRY_FIRST_WAIT_S)
    retries, waited = 0, 0.0
    while waited < seconds:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries)


class RetryingRedis(redis.Redis):
    """A ``redis.Redis`` whose commands wait through a Redis outage of up to
    ``CKPT_REDIS_RETRY_S`` seconds (default 60) instead of failing.

    For RQ: ``rq worker QUEUE --url $REDIS_URL --connection-class
    scorer_worker.connection.RetryingRedis`` (or ``RQ_CONNECTION_CLASS`` in the environment).
    A command whose reply was lost may be applied twice when retried; what the pipeline
    sends through it tolerates that (tasks are idempotent, markers and locks are SET NX), and
    redis-py does not retry a transaction that WATCHes: the drain sees a conflict and re-reads.
    """

    @classmethod
    def from_url(
        cls, url: str, *, settings: Settings | None = None, **kwargs: Any
    ) -> RetryingRedis:
        """Open a client for ``url`` that retries through an outage.

        Args:
            url: the Redis URL: ``redis://``, ``rediss://``, ``unix://``, or
                ``redis+sentinel://`` (a client of the sentinel-managed primary: a retried
                command asks the sentinels again, so it reaches a newly promoted primary).
            settings: where ``redis_retry_s`` comes from when no ``retry`` is given.
            kwargs: passed to ``redis.Redis.from_url`` (or, for a sentinel URL, to the
                primary's connections); a ``retry`` given here is used as is.

        The settings' timeouts and TCP keepalive (:meth:`Settings.redis_options`) apply
        unless ``kwargs`` name them; a ``redis://`` URL's connections close the server-side
        remains of the ones a network fault cut (:mod:`scorer_worker.orphans`). With no
        ``settings`` (RQ's ``--connection-class``: its CLI calls ``from_url(url)`` and
        nothing more, before the worker class, which builds the process's settings,
        exists), they are read from the environment: that call is the one place this class
        reads it.

        Raises:
            SentinelURLError: a ``redis+sentinel://`` URL that does not parse.
        """
        source = settings if settings is not None else Settings.from_env()
        if "retry" not in kwargs:
            kwargs["retry"] = outage_retry(source.redis_retry_s)
        # Under RQ this is the whole configuration of the worker's connection: without the
        # keepalive a dequeue blocked on a blackholed link waits RQ's 415 s read timeout.
        for option, value in source.redis_options().items():
            kwargs.setdefault(option, value)
        if is_sentinel_url(url):
            return sentinel_client(url, redis_class=cls, **kwargs)
        if url.startswith("redis://"):
            # After a blackhole, the server would hand the next task to the dead BLMOVE.
            kwargs.setdefault("connection_class", ReapingConnection)
        return super().from_url(url, **kwargs)


def connect(settings: Settings, *, ride_out_outages: bool = False) -> redis.Redis:
    """Open a Redis client for ``settings.redis_url`` with health checks, timeouts and TCP
    keepalive (:meth:`Settings.redis_options`), so that no command waits on a dead peer.

    Args:
        settings: the URL (``redis+sentinel://`` included: the client follows the primary),
            and how long long-running processes wait through an outage.
        ride_out_outages: retry through an outage of ``settings.redis_retry_s`` (for the
            pump and the all-in-one worker; a Sentinel failover is such an outage, a few
            seconds long); one-shot commands fail fast instead.

    Raises:
        SentinelURLError: a ``redis+sentinel://`` URL that does not parse.
    """
    options: dict[str, Any] = {
        **settings.redis_options(),
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    if ride_out_outages:
        return RetryingRedis.from_url(settings.redis_url, settings=settings, **options)
    return _plain_client(settings.redis_url, **options)


def _plain_client(url: str, **options: Any) -> redis.Redis:
    """A ``redis.Redis`` (redis-py's own retry policy) for ``url``, sentinel form included."""
    if is_sentinel_url(url):
        return sentinel_client(url, **options)
    return redis.Redis.from_url(url, **options)


def connect_data(settings: Settings, queue: Any = None, *, ride_out_outages: bool = False) -> Any:
    """Open the data side: ``queue`` itself when ``CKPT_DATA_REDIS_URL`` is unset, else a client
    of that server, a :class:`~redis.cluster.RedisCluster` when it runs in cluster mode.

    Args:
        settings: the URLs and the outage budget.
        queue: the queue-side client already open (returned when the sides are one server).
        ride_out_outages: as for :func:`connect`; on a cluster, a failed node's slots are
            looked up again and the command retried for ``redis_retry_s``.
    """
    if not settings.split_sides:
        return queue if queue is not None else connect(settings, ride_out_outages=ride_out_outages)
    url = settings.data_redis_url
    options = settings.redis_options()
    if not cluster_enabled(url, **options):
        if ride_out_outages:
            return RetryingRedis.from_url(url, settings=settings, **options)
        return redis.Redis.from_url(url, health_check_interval=30, **options)
    retry = outage_retry(settings.redis_retry_s if ride_out_outages else 0.0)
    return RedisCluster.from_url(url, retry=retry, **options)


PROBE_TIMEOUT_S = 2.0


def probe(settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """PING ``settings.redis_url`` once, with no retry and at most ``timeout_s`` per step.

    For commands that would otherwise wait silently through an outage (``work --burst``
    rides it out for ``redis_retry_s``): they say at once that Redis is not there.

    Behind Sentinel the step that can hang is also the question to the sentinels: each is
    asked with the URL's ``sentinel_timeout_s`` (0.5 s by default), the next one on a timeout.

    Raises:
        redis.ConnectionError: Redis refused the connection or did not accept it in time;
            behind Sentinel, also no sentinel naming a primary (``MasterNotFoundError``).
        redis.TimeoutError: Redis accepted the connection but did not answer in time.
        SentinelURLError: a ``redis+sentinel://`` URL that does not parse.
    """
    client = _plain_client(
        settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
    )
    try:
        client.ping()
    finally:
        close_client(client)


def task_connection(settings: Settings) -> Any:
    """Return the connection of the RQ job being executed, or a new one outside a worker."""
    job = get_current_job()
    return job.connection if job is not None else connect(settings)
