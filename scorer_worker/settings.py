"""One settings object for every process, read from the environment only when asked.

A long-running process builds its :class:`Settings` once (``Settings.from_env()``) and passes
them down; ``Settings(...)`` in code never reads the environment, so tests and callers that
pass explicit values get exactly those values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from producer.sockets import redis_socket_options

from .errors import ConfigError

DEFAULT_REDIS_URL = "redis://localhost:6379/0"

# Variables whose empty value means "not set" (``REDIS_URL=`` in a shell or a .env file).
_EMPTY_IS_UNSET = ("REDIS_URL", "CKPT_SINK", "CKPT_DATA_REDIS_URL")


def _default_sink() -> str:
    return "sqlite:///" + os.path.abspath("checkpoint-pipeline.db")


class Settings(BaseSettings):
    """Configuration of the pump, the workers and the CLI.

    Environment variables: ``REDIS_URL``, ``CKPT_SINK`` (``sqlite:///abs/path.db``,
    ``supabase``, ``postgresql://...``; unset or empty: ``checkpoint-pipeline.db`` in the
    working directory), ``SUPABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``, ``CKPT_PROFILE``,
    ``CKPT_POD_REDIS_URL`` (Redis as pods reach it; defaults to the data side),
    ``CKPT_DATA_REDIS_URL`` (the data side: a plain Redis or a Cluster node; defaults to
    ``REDIS_URL``), and
    ``CKPT_<FIELD>`` for the numeric fields below. Each field's variable is its
    ``validation_alias``; only :meth:`from_env` reads them.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        case_sensitive=True,
        extra="forbid",
        # Code passes field names (Settings(redis_url=...)); from_env passes variable names.
        # (populate_by_name, not validate_by_name: the latter needs pydantic 2.11.)
        populate_by_name=True,
    )

    # URLs may carry passwords and the key is a secret: none of them appear in repr().
    redis_url: str = Field(DEFAULT_REDIS_URL, validation_alias="REDIS_URL", repr=False)
    sink_url: str = Field("", validation_alias="CKPT_SINK", repr=False)
    supabase_url: str = Field("", validation_alias="SUPABASE_URL")
    supabase_key: str = Field("", validation_alias="SUPABASE_SERVICE_ROLE_KEY", repr=False)
    pod_redis_url: str = Field("", validation_alias="CKPT_POD_REDIS_URL", repr=False)
    # The data side (each job's stream, state, meta, decision, changes, dead letters): a
    # plain Redis or any node of a Redis Cluster. Empty: everything on redis_url.
    data_redis_url: str = Field("", validation_alias="CKPT_DATA_REDIS_URL", repr=False)
    # Commits wait for this many replicas to acknowledge them (WAIT), at most the timeout:
    # an acknowledged commit then survives its master's failover. 0: no WAIT.
    data_wait_replicas: int = Field(0, ge=0, validation_alias="CKPT_DATA_WAIT_REPLICAS")
    data_wait_timeout_ms: int = Field(1000, ge=0, validation_alias="CKPT_DATA_WAIT_TIMEOUT_MS")
    profile: str = Field("default", validation_alias="CKPT_PROFILE")
    drain_batch_events: int = Field(1000, validation_alias="CKPT_DRAIN_BATCH_EVENTS")
    # A task's time budget: a job still busy after it gets a task of its own, so one busy
    # job (a flooding pod, a delivered spool) holds the jobs batched with it for at most this.
    drain_budget_s: float = Field(1.0, validation_alias="CKPT_DRAIN_BUDGET_S")
    dispatch_batch_jobs: int = Field(500, validation_alias="CKPT_DISPATCH_BATCH_JOBS")
    pump_interval_ms: int = Field(20, validation_alias="CKPT_PUMP_INTERVAL_MS")
    discover_interval_s: float = Field(5.0, validation_alias="CKPT_DISCOVER_INTERVAL_S")
    queued_marker_ttl_s: int = Field(30, validation_alias="CKPT_QUEUED_MARKER_TTL_S")
    flush_lock_ttl_s: int = Field(30, validation_alias="CKPT_FLUSH_LOCK_TTL_S")
    flush_min_interval_s: float = Field(1.0, validation_alias="CKPT_FLUSH_MIN_INTERVAL_S")
    task_timeout_s: int = Field(120, validation_alias="CKPT_TASK_TIMEOUT_S")
    dead_payload_max_bytes: int = Field(4096, validation_alias="CKPT_DEAD_PAYLOAD_MAX_BYTES")
    # Each job's dead letters are capped at this many.
    dead_letters_per_job: int = Field(10_000, validation_alias="CKPT_DEAD_LETTERS_PER_JOB")
    # A drain reads a stream holding more than this through a bounded script (see
    # store.read_events), so no drain loads much more, whatever a pod appended.
    drain_read_max_bytes: int = Field(
        16 * 1024 * 1024, validation_alias="CKPT_DRAIN_READ_MAX_BYTES"
    )
    # Per-job limits on what a pod publishes (scorer_worker/limits.py). A real run is far
    # below: a Trainer logs a few events a second, and a spool delivered after an outage is a
    # burst the bucket absorbs.
    job_max_undrained_events: int = Field(100_000, validation_alias="CKPT_JOB_MAX_UNDRAINED_EVENTS")
    job_max_undrained_bytes: int = Field(
        256 * 1024 * 1024, validation_alias="CKPT_JOB_MAX_UNDRAINED_BYTES"
    )
    # A 100,000-step run keeps about 20 MB.
    job_max_state_bytes: int = Field(64 * 1024 * 1024, validation_alias="CKPT_JOB_MAX_STATE_BYTES")
    # Sustained, refilling a bucket of job_burst_events.
    job_max_events_per_s: float = Field(1000.0, validation_alias="CKPT_JOB_MAX_EVENTS_PER_S")
    job_burst_events: int = Field(50_000, validation_alias="CKPT_JOB_BURST_EVENTS")
    limits_interval_s: float = Field(1.0, validation_alias="CKPT_LIMITS_INTERVAL_S")
    # A running job silent this long is reported stalled.
    stall_after_s: float = Field(1800.0, validation_alias="CKPT_STALL_AFTER_S")
    poison_max_attempts: int = Field(3, validation_alias="CKPT_POISON_MAX_ATTEMPTS")
    sink_retry_attempts: int = Field(5, validation_alias="CKPT_SINK_RETRY_ATTEMPTS")
    sink_retry_max_s: float = Field(10.0, validation_alias="CKPT_SINK_RETRY_MAX_S")
    # How long long-running processes (RQ workers with RetryingRedis, the pump) wait through a
    # Redis outage before a Redis error surfaces.
    redis_retry_s: float = Field(60.0, validation_alias="CKPT_REDIS_RETRY_S")
    # A dead peer is not always a refused connection: on a blackholed link nothing answers.
    # These bound every wait on one (producer/sockets.py says how they combine).
    redis_connect_timeout_s: float = Field(
        5.0, gt=0, validation_alias="CKPT_REDIS_CONNECT_TIMEOUT_S"
    )
    redis_socket_timeout_s: float = Field(
        10.0, gt=0, validation_alias="CKPT_REDIS_SOCKET_TIMEOUT_S"
    )
    tcp_keepalive_idle_s: int = Field(5, ge=1, validation_alias="CKPT_TCP_KEEPALIVE_IDLE_S")
    tcp_keepalive_interval_s: int = Field(2, ge=1, validation_alias="CKPT_TCP_KEEPALIVE_INTERVAL_S")
    tcp_keepalive_count: int = Field(3, ge=1, validation_alias="CKPT_TCP_KEEPALIVE_COUNT")
    tcp_user_timeout_ms: int = Field(15_000, ge=0, validation_alias="CKPT_TCP_USER_TIMEOUT_MS")
    # PostgreSQL sink: a connect, a row lock and a statement each wait at most this long; a
    # transaction whose client vanished is ended by the server after the idle timeout, so it
    # does not hold its row locks until the server's own keepalive notices (hours).
    sink_connect_timeout_s: float = Field(5.0, ge=2, validation_alias="CKPT_SINK_CONNECT_TIMEOUT_S")
    sink_lock_timeout_s: float = Field(5.0, gt=0, validation_alias="CKPT_SINK_LOCK_TIMEOUT_S")
    sink_statement_timeout_s: float = Field(
        30.0, gt=0, validation_alias="CKPT_SINK_STATEMENT_TIMEOUT_S"
    )
    sink_idle_in_transaction_timeout_s: float = Field(
        10.0, gt=0, validation_alias="CKPT_SINK_IDLE_IN_TRANSACTION_TIMEOUT_S"
    )

    @property
    def data_url(self) -> str:
        """The data side's URL: ``data_redis_url``, else ``redis_url``."""
        return self.data_redis_url or self.redis_url

    @property
    def split_sides(self) -> bool:
        """Whether the data side is a server of its own (``CKPT_DATA_REDIS_URL`` set)."""
        return bool(self.data_redis_url) and self.data_redis_url != self.redis_url

    def keepalive(self) -> dict[str, int]:
        """The TCP keepalive settings, as :func:`producer.sockets.tcp_keepalive_options` wants."""
        return {
            "idle_s": self.tcp_keepalive_idle_s,
            "interval_s": self.tcp_keepalive_interval_s,
            "count": self.tcp_keepalive_count,
            "user_timeout_ms": self.tcp_user_timeout_ms,
        }

    def redis_options(self) -> dict[str, Any]:
        """redis-py client options: this process's connect and read timeouts and keepalive."""
        return redis_socket_options(
            self.redis_connect_timeout_s, self.redis_socket_timeout_s, **self.keepalive()
        )

    @property
    def pod_url(self) -> str:
        """Redis as pods reach it: ``pod_redis_url``, else the data side (pods publish there)."""
        return self.pod_redis_url or self.data_url

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Only the values given to the constructor: ``Settings()`` never reads the
        environment (nor a .env file, nor secrets); :meth:`from_env` does, explicitly."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``).

        Each field is read from its variable (its ``validation_alias``) and parsed by
        pydantic, whatever its type (``float | None`` included); an unset variable keeps the
        field's default. An empty ``REDIS_URL`` or ``CKPT_SINK`` counts as unset.

        Raises:
            ConfigError: when a variable does not parse, naming it and its value.
        """
        env = os.environ if env is None else env
        values = environment_values(cls, env)
        for variable in _EMPTY_IS_UNSET:
            if values.get(variable) == "":
                del values[variable]
        values.setdefault("CKPT_SINK", _default_sink())
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(describe_errors(cls, exc)) from None


def environment_values(settings_cls: type[BaseSettings], env: Mapping[str, str]) -> dict[str, Any]:
    """Return ``{variable: value}`` for each field of ``settings_cls`` whose variable (its
    string ``validation_alias``) is set in ``env``."""
    return {
        field.validation_alias: env[field.validation_alias]
        for field in settings_cls.model_fields.values()
        if isinstance(field.validation_alias, str) and field.validation_alias in env
    }


def describe_errors(settings_cls: type[BaseSettings], exc: ValidationError) -> str:
    """One line per bad value of ``exc``: the variable, the value as given, and why."""
    names = {
        name: field.validation_alias
        for name, field in settings_cls.model_fields.items()
        if isinstance(field.validation_alias, str)
    }
    lines = []
    for error in exc.errors(include_url=False):
        key = str(error["loc"][0]) if error["loc"] else "?"
        lines.append(f"{names.get(key, key)}={error.get('input')!r}: {error['msg']}")
    return "; ".join(lines)
