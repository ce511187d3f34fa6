"""CheckpointEventsCallback driving a real transformers.Trainer on the tiny local GPT-2.

The events go through a real EventPublisher to the private redis-server, and every one of them
is checked against the scorer's schema of record (scorer_worker.models.decode_event).
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from transformers import TrainerCallback, set_seed

from ckpt_pipeline.demo.model import prepare_overfit_demo
from ckpt_pipeline.testing.local_redis import LocalRedis
from producer import CheckpointEventsCallback
from producer.wire import EVENT_FIELD, KINDS, checkpoint_step, stream_key
from remote.training import build_trainer
from scorer_worker.models import WireEvent, decode_event

RUN_JOB = "cb-run"
# The demo data set is 40 training examples in batches of 8: 5 steps an epoch.
SHORT_RUN = {
    "num_train_epochs": 3,
    "eval_steps": 5,
    "save_steps": 5,
    "logging_steps": 2,
    "save_total_limit": 2,
}


def short_spec(workdir: Path, job_id: str, **overrides: Any) -> dict:
    spec = prepare_overfit_demo(workdir, job_id)
    spec.update(SHORT_RUN)
    spec.update(overrides)
    return spec


def checkpoint_folders(output_dir: str | Path) -> list[str]:
    names = [p.name for p in Path(output_dir).iterdir() if checkpoint_step(p.name) is not None]
    return sorted(names, key=checkpoint_step)


def read_stream(client: redis.Redis, job_id: str) -> list[bytes]:
    """The raw ``event`` payloads of a job's stream; each entry must hold only that field."""
    raws = []
    for _entry_id, fields in client.xrange(stream_key(job_id)):
        assert list(fields) == [EVENT_FIELD.encode()], fields
        raws.append(fields[EVENT_FIELD.encode()])
    return raws


def decode_all(raws: list[bytes], job_id: str) -> list[WireEvent]:
    return [decode_event(raw, job_id) for raw in raws]


class DiskObserver(TrainerCallback):
    """Records the checkpoint folders on disk at each on_save, independently of the callback."""

    def __init__(self) -> None:
        self.at_save: list[tuple[int, list[str]]] = []

    def on_save(self, args, state, control, **kwargs):
        self.at_save.append((state.global_step, checkpoint_folders(args.output_dir)))


class CrashAtStep(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("boom")


@pytest.fixture(scope="module")
def full_run(redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One short real training run; its stream is read as soon as train() returns."""
    workdir = tmp_path_factory.mktemp("full-run")
    spec = short_spec(workdir, RUN_JOB)
    client = redis.Redis.from_url(redis_server.url)
    client.delete(stream_key(RUN_JOB))
    callback = CheckpointEventsCallback(RUN_JOB, redis_server.url, spool_dir=workdir / "spool")
    observer = DiskObserver()
    set_seed(spec["seed"])
    trainer = build_trainer(spec, [callback, observer])
    trainer.train()
    # No polling: train() returns after on_train_end closed the publisher, which delivers
    # everything before returning.
    raws = read_stream(client, RUN_JOB)
    client.close()
    return SimpleNamespace(
        spec=spec,
        raws=raws,
        events=decode_all(raws, RUN_JOB),
        observer=observer,
        final_folders=checkpoint_folders(spec["output_dir"]),
        max_steps=trainer.state.max_steps,
        spool_dir=workdir / "spool",
    )


def test_every_emitted_event_matches_the_schema_of_record(full_run: SimpleNamespace) -> None:
    assert len(full_run.raws) > 10
    for raw in full_run.raws:
        event = decode_event(raw, RUN_JOB)  # raises InvalidEvent on any mismatch
        assert event.job_id == RUN_JOB
    assert not full_run.spool_dir.exists() or list(full_run.spool_dir.iterdir()) == []


def test_run_publishes_all_five_kinds_in_order(full_run: SimpleNamespace) -> None:
    events = full_run.events
    kinds = [e.kind for e in events]
    assert set(kinds) == set(KINDS)
    assert kinds.count("train_begin") == 1 and kinds[0] == "train_begin"
    assert kinds.count("train_end") == 1 and kinds[-1] == "train_end"
    steps = [e.step for e in events]
    assert steps == sorted(steps)
    assert full_run.max_steps == 15

    begin = events[0]
    assert begin.step == 0
    assert begin.info.max_steps == 15
    assert begin.info.num_train_epochs == 3
    assert begin.info.resumed_from_step == 0
    assert begin.info.save_total_limit == 2
    assert begin.info.output_dir == str(Path(full_run.spec["output_dir"]).resolve())

    logs = [e for e in events if e.kind == "train_log"]
    assert [e.step for e in logs] == [2, 4, 6, 8, 10, 12, 14]
    assert all(e.metrics["loss"] > 0 for e in logs)
    assert all({"learning_rate", "grad_norm"} <= set(e.metrics) for e in logs)

    evals = [e for e in events if e.kind == "eval"]
    assert [e.step for e in evals] == [5, 10, 15]
    assert all(e.metrics["eval_loss"] > 0 for e in evals)

    end = events[-1]
    assert end.step == 15
    assert end.info.status == "completed" and end.info.error is None
    assert end.metrics["train_runtime"] > 0 and end.metrics["train_loss"] > 0


def test_checkpoint_saved_lists_the_folders_on_disk_after_rotation(
    full_run: SimpleNamespace,
) -> None:
    saved = [e for e in full_run.events if e.kind == "checkpoint_saved"]
    assert [e.info.checkpoint for e in saved] == ["checkpoint-5", "checkpoint-10", "checkpoint-15"]
    published = [(e.step, list(e.info.retained)) for e in saved]
    assert published == full_run.observer.at_save
    for event in saved:
        assert 1 <= len(event.info.retained) <= 2
        assert event.info.checkpoint in event.info.retained
    # Three saves with save_total_limit=2: rotation removed one, and the last list says so.
    assert saved[-1].info.retained == full_run.final_folders
    assert len(full_run.final_folders) == 2


def test_only_world_process_zero_publishes(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job = "cb-rank1"
    spool_dir = tmp_path / "spool"
    callback = CheckpointEventsCallback(job, redis_server.url, spool_dir=spool_dir)
    (tmp_path / "out" / "checkpoint-4").mkdir(parents=True)
    args = SimpleNamespace(num_train_epochs=2, save_total_limit=2, output_dir=str(tmp_path / "out"))
    state = SimpleNamespace(is_world_process_zero=False, global_step=4, epoch=0.5, max_steps=10)
    control = SimpleNamespace()

    callback.on_train_begin(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 1.0, "learning_rate": 1e-3})
    callback.on_evaluate(args, state, control, metrics={"eval_loss": 1.2})
    callback.on_save(args, state, control)
    callback.on_log(args, state, control, logs={"train_runtime": 1.0, "train_loss": 1.0})
    callback.on_train_end(args, state, control)
    callback.report_failure(RuntimeError("boom"))

    publisher_threads = [t for t in threading.enumerate() if t.name == f"ckpt-publisher-{job}"]
    assert publisher_threads == []
    assert callback._publisher is None
    assert redis_client.exists(stream_key(job)) == 0
    assert not spool_dir.exists()

    # Control: the same calls on rank zero do publish, so the check above could fail.
    state.is_world_process_zero = True
    callback.on_train_begin(args, state, control)
    callback.on_train_end(args, state, control)
    assert [e.kind for e in decode_all(read_stream(redis_client, job), job)] == [
        "train_begin",
        "train_end",
    ]


def test_report_failure_publishes_a_failed_train_end(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job = "cb-fail"
    spec = short_spec(tmp_path, job)
    callback = CheckpointEventsCallback(job, redis_server.url, spool_dir=tmp_path / "spool")
    set_seed(spec["seed"])
    trainer = build_trainer(spec, [callback, CrashAtStep(3)])

    with pytest.raises(RuntimeError, match="boom") as raised:
        trainer.train()
    callback.report_failure(raised.value)

    events = decode_all(read_stream(redis_client, job), job)
    assert [e.kind for e in events] == ["train_begin", "train_log", "train_end"]
    end = events[-1]
    assert end.step == 3
    assert end.info.status == "failed"
    assert "boom" in end.info.error
    assert "RuntimeError" in end.info.error


def test_resumed_run_reports_the_step_it_resumes_from(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job = "cb-resume"
    spec = short_spec(tmp_path, job, num_train_epochs=2)
    first = CheckpointEventsCallback(job, redis_server.url, spool_dir=tmp_path / "spool")
    set_seed(spec["seed"])
    build_trainer(spec, [first]).train()
    checkpoint = Path(spec["output_dir"]) / "checkpoint-5"
    assert checkpoint.is_dir()

    longer = {**spec, "num_train_epochs": 3}
    second = CheckpointEventsCallback(job, redis_server.url, spool_dir=tmp_path / "spool")
    set_seed(spec["seed"])
    build_trainer(longer, [second]).train(resume_from_checkpoint=str(checkpoint))

    events = decode_all(read_stream(redis_client, job), job)
    begins = [i for i, e in enumerate(events) if e.kind == "train_begin"]
    assert len(begins) == 2
    resumed = events[begins[1]]
    assert resumed.info.resumed_from_step == 5
    assert resumed.step == 5
    assert resumed.info.max_steps == 15
    assert resumed.info.num_train_epochs == 3
    after = events[begins[1] + 1 :]
    assert after[0].kind == "train_log" and after[0].step == 6
    assert after[-1].kind == "train_end" and after[-1].step == 15


def test_callback_requires_a_job_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOB_ID", raising=False)
    with pytest.raises(ValueError, match="job id"):
        CheckpointEventsCallback()
    with pytest.raises(ValueError, match="job id"):
        CheckpointEventsCallback("not a valid id!")


def test_callback_takes_job_and_redis_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    redis_client: redis.Redis,
    redis_server: LocalRedis,
    tmp_path: Path,
) -> None:
    job = "cb-env"
    monkeypatch.setenv("JOB_ID", job)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("CKPT_SPOOL_DIR", str(tmp_path / "spool"))

    callback = CheckpointEventsCallback()

    assert callback.job_id == job
    args = SimpleNamespace(num_train_epochs=1, save_total_limit=None, output_dir=None)
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, epoch=0.0, max_steps=3)
    callback.on_train_begin(args, state, SimpleNamespace())
    assert callback.publisher.redis_url == redis_server.url
    state.global_step, state.epoch = 3, 1.0
    callback.on_train_end(args, state, SimpleNamespace())

    events = decode_all(read_stream(redis_client, job), job)
    assert [(e.kind, e.step) for e in events] == [("train_begin", 0), ("train_end", 3)]
    assert events[0].info.output_dir is None
