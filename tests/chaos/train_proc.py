"""A training process for experiment 2: a real ``Trainer`` run of the tiny model with the
``CheckpointEventsCallback``, instrumented from the outside.

``python -m tests.chaos.train_proc CONFIG.json`` where the config names the job, Redis, the
spool folder, the work folder and the number of epochs. While it trains it writes its
global step to ``<report>.step``; at the end it writes ``<report>`` (JSON): every event it
published, in order, the wall time of every optimizer step, how long each ``publish`` call
took, and the largest spool and in-memory queue seen. Each published event is also appended
to ``<report>.published.jsonl`` as it is published, so a killed run leaves that record.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from transformers import PrinterCallback, TrainerCallback, set_seed

from ckpt_pipeline.demo.model import prepare_overfit_demo
from producer import CheckpointEventsCallback, EventPublisher
from producer.events import build_event, encode_event
from remote.training import build_trainer


class RecordingPublisher(EventPublisher):
    """An EventPublisher that also keeps what it was given, and how long each call took."""

    def __init__(self, *args: Any, log_path: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.published: list[str] = []
        self.publish_seconds: list[float] = []
        self.publish_times: list[float] = []  # when each emit call ran (wall clock)
        self._accepted: list[Any] = []
        # Line-buffered: what was published before a SIGKILL is still in the file.
        self._log = open(log_path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115

    def emit(self, *args: Any, **kwargs: Any) -> bool:
        # What the callback calls: timed as the training thread sees it, recorded after.
        start = time.perf_counter()
        accepted = super().emit(*args, **kwargs)
        self.publish_seconds.append(time.perf_counter() - start)
        self.publish_times.append(time.time())
        self._record()
        return accepted

    def publish(self, event: dict[str, Any]) -> bool:
        start = time.perf_counter()
        accepted = super().publish(event)
        self.publish_seconds.append(time.perf_counter() - start)
        self.publish_times.append(time.time())
        self._record()
        return accepted

    def _enqueue(self, item: Any, kind: Any) -> bool:
        accepted = super()._enqueue(item, kind)
        if accepted:
            self._accepted.append(item)
        return accepted

    def _record(self) -> None:
        for item in self._accepted:  # an emit()ted event is built as the publisher would
            event = item if isinstance(item, dict) else build_event(*item)
            self.published.append(encode_event(event))
            self._log.write(self.published[-1] + "\n")
        self._accepted.clear()


class StepClock(TrainerCallback):
    """Records the wall time and spool size at every step end, and the queue length."""

    def __init__(self, publisher: RecordingPublisher, step_file: Path) -> None:
        self.publisher, self.step_file = publisher, step_file
        self.steps: list[tuple[int, float, int]] = []
        self.spool_max_bytes = 0
        self.queue_max = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        spool = self.publisher.spool.path
        size = spool.stat().st_size if spool.exists() else 0
        self.steps.append((state.global_step, time.time(), size))
        self.spool_max_bytes = max(self.spool_max_bytes, size)
        self.queue_max = max(self.queue_max, self.publisher.pending_events)
        tmp = self.step_file.with_suffix(".tmp")
        tmp.write_text(f"{state.global_step} {size}")
        os.replace(tmp, self.step_file)


def main(config_path: str) -> None:
    config = json.loads(Path(config_path).read_text())
    workdir, report = Path(config["workdir"]), Path(config["report"])
    spec = {
        **prepare_overfit_demo(workdir, config["job_id"]),
        "num_train_epochs": config["epochs"],
        "eval_steps": 20,
        "save_steps": 20,
        "logging_steps": 2,
        "save_total_limit": 3,
    }
    set_seed(spec["seed"])
    publisher = RecordingPublisher(
        config["job_id"],
        config["redis_url"],
        spool_dir=config["spool_dir"],
        retry_max_s=2.0,
        log_path=report.with_suffix(".published.jsonl"),
    )
    clock = StepClock(publisher, report.with_suffix(".step"))
    callback = CheckpointEventsCallback(config["job_id"], publisher=publisher)
    trainer = build_trainer(spec, [callback, clock])
    trainer.remove_callback(PrinterCallback)
    started = time.time()
    trainer.train()
    finished = time.time()
    publisher.close(timeout_s=60)
    report.write_text(
        json.dumps(
            {
                "published": publisher.published,
                "steps": clock.steps,
                "train_started": started,
                "train_finished": finished,
                "publish_seconds_max": max(publisher.publish_seconds, default=0.0),
                "publish_calls": len(publisher.publish_seconds),
                "emit_calls": list(
                    zip(publisher.publish_times, publisher.publish_seconds, strict=True)
                ),
                "spool_max_bytes": clock.spool_max_bytes,
                "queue_max": clock.queue_max,
                "sent": publisher.sent,
                "spooled": publisher.spooled,
                "dropped": publisher.dropped,
                "spool_left_bytes": publisher.spool.undelivered_bytes(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
