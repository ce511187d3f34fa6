"""Settings: built from the environment only by ``from_env``, with the documented variables,
and a readable ConfigError on a bad value (never a pydantic traceback)."""

from __future__ import annotations

import os
import socket

import pytest
from pydantic import Field, ValidationError

from remote.lifecycle import LifecycleConfig
from scorer_worker.connection import RetryingRedis, connect, outage_retry
from scorer_worker.errors import ConfigError
from scorer_worker.settings import DEFAULT_REDIS_URL, Settings

# The variables are public surface (README.md, docs): each field keeps its exact name.
VARIABLES = {
    "redis_url": "REDIS_URL",
    "sink_url": "CKPT_SINK",
    "supabase_url": "SUPABASE_URL",
    "supabase_key": "SUPABASE_SERVICE_ROLE_KEY",
    "pod_redis_url": "CKPT_POD_REDIS_URL",
    "data_redis_url": "CKPT_DATA_REDIS_URL",
    "data_wait_replicas": "CKPT_DATA_WAIT_REPLICAS",
    "data_wait_timeout_ms": "CKPT_DATA_WAIT_TIMEOUT_MS",
    "profile": "CKPT_PROFILE",
    "drain_batch_events": "CKPT_DRAIN_BATCH_EVENTS",
    "drain_budget_s": "CKPT_DRAIN_BUDGET_S",
    "dispatch_batch_jobs": "CKPT_DISPATCH_BATCH_JOBS",
    "pump_interval_ms": "CKPT_PUMP_INTERVAL_MS",
    "discover_interval_s": "CKPT_DISCOVER_INTERVAL_S",
    "queued_marker_ttl_s": "CKPT_QUEUED_MARKER_TTL_S",
    "flush_lock_ttl_s": "CKPT_FLUSH_LOCK_TTL_S",
    "flush_min_interval_s": "CKPT_FLUSH_MIN_INTERVAL_S",
    "task_timeout_s": "CKPT_TASK_TIMEOUT_S",
    "dead_payload_max_bytes": "CKPT_DEAD_PAYLOAD_MAX_BYTES",
    "dead_letters_per_job": "CKPT_DEAD_LETTERS_PER_JOB",
    "drain_read_max_bytes": "CKPT_DRAIN_READ_MAX_BYTES",
    "job_max_undrained_events": "CKPT_JOB_MAX_UNDRAINED_EVENTS",
    "job_max_undrained_bytes": "CKPT_JOB_MAX_UNDRAINED_BYTES",
    "job_max_state_bytes": "CKPT_JOB_MAX_STATE_BYTES",
    "job_max_events_per_s": "CKPT_JOB_MAX_EVENTS_PER_S",
    "job_burst_events": "CKPT_JOB_BURST_EVENTS",
    "limits_interval_s": "CKPT_LIMITS_INTERVAL_S",
    "stall_after_s": "CKPT_STALL_AFTER_S",
    "poison_max_attempts": "CKPT_POISON_MAX_ATTEMPTS",
    "sink_retry_attempts": "CKPT_SINK_RETRY_ATTEMPTS",
    "sink_retry_max_s": "CKPT_SINK_RETRY_MAX_S",
    "redis_retry_s": "CKPT_REDIS_RETRY_S",
    "redis_connect_timeout_s": "CKPT_REDIS_CONNECT_TIMEOUT_S",
    "redis_socket_timeout_s": "CKPT_REDIS_SOCKET_TIMEOUT_S",
    "tcp_keepalive_idle_s": "CKPT_TCP_KEEPALIVE_IDLE_S",
    "tcp_keepalive_interval_s": "CKPT_TCP_KEEPALIVE_INTERVAL_S",
    "tcp_keepalive_count": "CKPT_TCP_KEEPALIVE_COUNT",
    "tcp_user_timeout_ms": "CKPT_TCP_USER_TIMEOUT_MS",
    "sink_connect_timeout_s": "CKPT_SINK_CONNECT_TIMEOUT_S",
    "sink_lock_timeout_s": "CKPT_SINK_LOCK_TIMEOUT_S",
    "sink_statement_timeout_s": "CKPT_SINK_STATEMENT_TIMEOUT_S",
    "sink_idle_in_transaction_timeout_s": "CKPT_SINK_IDLE_IN_TRANSACTION_TIMEOUT_S",
}


def test_every_field_keeps_its_documented_variable() -> None:
    aliases = {name: field.validation_alias for name, field in Settings.model_fields.items()}
    assert aliases == VARIABLES


def test_the_constructor_never_reads_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    for name, variable in VARIABLES.items():
        monkeypatch.setenv(variable, "7" if name not in _STRINGS else "from-env")
    assert Settings() == Settings.model_construct()
    assert Settings().redis_url == DEFAULT_REDIS_URL and Settings().sink_url == ""
    explicit = Settings(redis_url="redis://given", drain_batch_events=3)
    assert (explicit.redis_url, explicit.drain_batch_events) == ("redis://given", 3)
    assert explicit.dispatch_batch_jobs == 500  # the default, not CKPT_DISPATCH_BATCH_JOBS


_STRINGS = {
    "redis_url",
    "sink_url",
    "supabase_url",
    "supabase_key",
    "pod_redis_url",
    "profile",
    "data_redis_url",
}


def test_from_env_reads_every_variable() -> None:
    env = {variable: "7" for name, variable in VARIABLES.items() if name not in _STRINGS}
    env |= {VARIABLES[name]: f"{name}-value" for name in _STRINGS}
    settings = Settings.from_env(env)
    for name in VARIABLES:
        expected = f"{name}-value" if name in _STRINGS else 7
        assert getattr(settings, name) == expected, name
        assert type(getattr(settings, name)) is type(Settings.model_fields[name].default), name


def test_from_env_defaults_to_os_environ(monkeypatch) -> None:
    monkeypatch.setenv("CKPT_DRAIN_BUDGET_S", "2.5")
    monkeypatch.setenv("CKPT_TASK_TIMEOUT_S", "9")
    settings = Settings.from_env()
    assert (settings.drain_budget_s, settings.task_timeout_s) == (2.5, 9)
    assert Settings.from_env(os.environ) == settings


def test_unset_and_empty_values(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    default_sink = "sqlite:///" + str(tmp_path / "checkpoint-pipeline.db")
    unset = Settings.from_env({})
    assert unset.redis_url == DEFAULT_REDIS_URL and unset.sink_url == default_sink
    assert unset.model_copy(update={"sink_url": ""}) == Settings()  # all else defaults
    empty = Settings.from_env({"REDIS_URL": "", "CKPT_SINK": "", "CKPT_PROFILE": ""})
    assert empty.redis_url == DEFAULT_REDIS_URL and empty.sink_url == default_sink
    assert empty.profile == ""  # as before: only REDIS_URL and CKPT_SINK fall back
    unrelated = {"CKPT_SPOOL_DIR": "/tmp/x", "CKPT_NOT_A_SETTING": "1", "PATH": "/bin"}
    assert Settings.from_env(unrelated) == unset


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CKPT_DRAIN_BATCH_EVENTS", "ten"),
        ("CKPT_DRAIN_BATCH_EVENTS", "1.5"),
        ("CKPT_DRAIN_BATCH_EVENTS", ""),
        ("CKPT_DRAIN_BUDGET_S", "soon"),
        ("CKPT_REDIS_RETRY_S", ""),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable_and_the_value(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert message.startswith(f"{variable}={value!r}")
    assert "pydantic" not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_every_bad_value_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CKPT_TASK_TIMEOUT_S": "x", "CKPT_STALL_AFTER_S": "y"})
    assert "CKPT_TASK_TIMEOUT_S='x'" in str(caught.value)
    assert "CKPT_STALL_AFTER_S='y'" in str(caught.value)


class _WithOptional(Settings):
    """A settings class with an optional number, as the issue describes."""

    ceiling_s: float | None = Field(None, validation_alias="CKPT_CEILING_S")


def test_an_optional_number_is_read_from_the_environment() -> None:
    assert _WithOptional.from_env({}).ceiling_s is None
    read = _WithOptional.from_env({"CKPT_CEILING_S": "2.5"})
    assert read.ceiling_s == 2.5 and isinstance(read, _WithOptional)
    with pytest.raises(ConfigError, match="CKPT_CEILING_S='never'"):
        _WithOptional.from_env({"CKPT_CEILING_S": "never"})


def test_settings_are_frozen_and_hide_secrets() -> None:
    settings = Settings(
        redis_url="redis://u:pw-REDIS@h",
        sink_url="postgresql://u:pw-SINK@h/db",
        supabase_key="KEY-SECRET",
        pod_redis_url="redis://p:pw-POD@h",
    )
    with pytest.raises(ValidationError):
        settings.profile = "other"  # type: ignore[misc]
    assert {settings} == {settings.model_copy()}  # hashable, equal by value
    shown = repr(settings) + str(settings)
    assert not any(s in shown for s in ("pw-REDIS", "pw-SINK", "KEY-SECRET", "pw-POD"))
    changed = settings.model_copy(update={"limits_interval_s": 0.0})
    assert changed.limits_interval_s == 0.0 and settings.limits_interval_s == 1.0


def test_an_unknown_field_in_code_is_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(drain_batch_event=3)  # type: ignore[call-arg]


def test_lifecycle_config_reads_the_environment_only_in_from_env(monkeypatch) -> None:
    monkeypatch.setenv("CKPT_RUNPOD_POLL_S", "45")
    monkeypatch.setenv("RUNPOD_API_KEY", "rk-SECRET")
    assert LifecycleConfig().poll_s == 30.0 and LifecycleConfig().api_key == ""
    read = LifecycleConfig.from_env()
    assert (read.poll_s, read.api_key) == (45.0, "rk-SECRET")
    assert "rk-SECRET" not in repr(read)
    variables = {n: f.validation_alias for n, f in LifecycleConfig.model_fields.items()}
    assert variables == {
        "api_key": "RUNPOD_API_KEY",
        "api_url": "RUNPOD_API_URL",
        "poll_s": "CKPT_RUNPOD_POLL_S",
        "retry_first_s": "CKPT_RUNPOD_RETRY_FIRST_S",
        "retry_max_s": "CKPT_RUNPOD_RETRY_MAX_S",
        "timeout_s": None,
    }
    empty = LifecycleConfig.from_env({"RUNPOD_API_URL": "", "CKPT_RUNPOD_RETRY_MAX_S": ""})
    assert empty == LifecycleConfig()  # empty counts as unset, as before
    with pytest.raises(ValueError, match="CKPT_RUNPOD_RETRY_FIRST_S='x'") as caught:
        LifecycleConfig.from_env({"CKPT_RUNPOD_RETRY_FIRST_S": "x"})
    assert not isinstance(caught.value, ValidationError)
    with pytest.raises(ValidationError):
        read.poll_s = 1.0  # type: ignore[misc]


def _env_reads(monkeypatch) -> list[object]:
    reads: list[object] = []
    real = Settings.from_env.__func__  # type: ignore[attr-defined]

    def counting(cls, env=None):
        reads.append(env)
        return real(cls, env)

    monkeypatch.setattr(Settings, "from_env", classmethod(counting))
    return reads


def test_the_connection_class_takes_its_settings_and_reads_the_env_only_for_rq(
    monkeypatch,
) -> None:
    reads = _env_reads(monkeypatch)
    monkeypatch.setenv("CKPT_REDIS_RETRY_S", "5")
    given = RetryingRedis.from_url("redis://unused", settings=Settings(redis_retry_s=0.5))
    expected = outage_retry(0.5).get_retries()
    assert given.get_retry().get_retries() == expected and reads == []
    retried = connect(Settings(redis_retry_s=0.5), ride_out_outages=True)
    assert isinstance(retried, RetryingRedis) and reads == []
    assert retried.get_retry().get_retries() == expected
    explicit = RetryingRedis.from_url(
        "redis://unused", settings=Settings(), retry=outage_retry(0.5)
    )
    assert explicit.get_retry().get_retries() == expected and reads == []
    # RQ's --connection-class calls from_url(url) alone: then, and only then, one env read
    # (the retry budget and the socket options both come from it).
    monkeypatch.setenv("CKPT_TCP_KEEPALIVE_IDLE_S", "7")
    as_rq_does = RetryingRedis.from_url("redis://unused")
    assert reads == [None]
    assert as_rq_does.get_retry().get_retries() == outage_retry(5).get_retries()
    options = as_rq_does.connection_pool.connection_kwargs
    assert options["socket_keepalive"] is True
    assert options["socket_keepalive_options"][socket.TCP_KEEPIDLE] == 7
