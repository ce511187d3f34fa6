"""The Redis layout lives in scorer_worker/keys.py: scripts build no key names, and every meta
field the pipeline writes is a declared MetaField (or a poison counter)."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest

from producer.events import build_event
from scorer_worker import keys
from scorer_worker.drain import drain_job
from scorer_worker.keys import POISON_PREFIX, JobMeta, MetaField
from scorer_worker.limits import cut_off_job
from scorer_worker.poison import Poisoned, record_poison
from scorer_worker.registry import record_pod_user, register_job
from scorer_worker.settings import Settings
from sink.flush import flush_job

from .test_drain_pump_flush import _sqlite, publish, raw_run

ROOT = Path(__file__).resolve().parents[1]
LUA_FILES = sorted([*ROOT.glob("scorer_worker/lua/*.lua"), *ROOT.glob("sink/lua/*.lua")])
JOB = "layout-job"


@pytest.mark.parametrize("path", LUA_FILES, ids=lambda p: p.name)
def test_no_script_builds_a_key_name(path: Path) -> None:
    # Every key a script touches comes in KEYS (one node holds a job's keys; Cluster-safe).
    code = "\n".join(line.split("--")[0] for line in path.read_text().splitlines())
    assert "ckpt:" not in code and "}:" not in code and ".. '" not in code


def test_every_meta_field_written_is_declared(tmp_path) -> None:
    fake = fakeredis.FakeRedis()
    settings = Settings(redis_url="redis://unused", sink_url=f"sqlite:///{tmp_path / 'j.db'}")
    _sqlite(settings).create_job(JOB, "tok")
    register_job(fake, JOB, "tok")
    record_pod_user(fake, JOB, "pod-user", "pod-password")
    publish(fake, raw_run(2, job=JOB), job=JOB)
    drain_job(fake, JOB, settings)
    assert flush_job(fake, JOB, settings).outcome == "written"
    record_poison(fake, JOB, Poisoned("1-0", ValueError("boom")), settings)
    fake.hset(keys.meta(JOB), MetaField.STALLED_SINCE, "1.5")
    cut_off_job(fake, JOB, "flooded")
    publish(fake, [build_event("train_log", JOB, 99, 1.0, {"loss": 0.1}, ts=99)], job=JOB)
    drain_job(fake, JOB, settings)
    written = {name.decode() for name in fake.hkeys(keys.meta(JOB))}
    undeclared = {n for n in written if n not in set(MetaField) and not n.startswith(POISON_PREFIX)}
    assert undeclared == set()
    assert {MetaField.TOKEN, MetaField.WRITTEN_VERSION, MetaField.CUT_OFF} <= written


def test_the_meta_record_reads_the_hash_typed() -> None:
    meta = JobMeta.from_hash(
        {b"version": b"3", b"last_flush_at": b"1.5", b"status": b"", b"token": b"t",
         b"poison:1-0": b"boom", b"poison:1-0:n": b"2", b"unknown": b"x"}
    )  # fmt: skip
    assert (meta.version, meta.last_flush_at, meta.status) == (3, 1.5, None)
    assert meta.written_version == 0
    assert meta.poison["1-0"].attempts == 2 and meta.poison["1-0"].reason == "boom"
    assert meta.secrets == ("t",)
