"""The callback benchmark's measurement, run behind a link the experiment breaks.

``python -m tests.chaos.callback_probe REDIS_URL SPOOL_DIR REPORT SECONDS`` calls
``CheckpointEventsCallback.on_log`` once per millisecond until ``REPORT.stop`` exists (at
most ``SECONDS``), exactly as
``benchmarks/callback.py`` does (same calls, same pacing, a real ``EventPublisher``), and
writes ``REPORT`` (JSON): each call's wall-clock start and its duration in µs, and the
publisher's counts. Experiment 13 runs it in the training process's namespace, so its
figures compare with the benchmark's ``callback_p99_us`` target in each phase of the link.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.callback import timed_calls
from producer import CheckpointEventsCallback, EventPublisher

JOB = "network-callback-probe"
CALLS_PER_ROUND = 1000


def main(redis_url: str, spool_dir: str, report: str, seconds: float) -> None:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args = TrainingArguments(output_dir=tempfile.mkdtemp(), report_to=[], use_cpu=True)
    state = TrainerState(max_steps=10**7, num_train_epochs=10, logging_steps=1)
    publisher = EventPublisher(JOB, redis_url, spool_dir=spool_dir)
    callback = CheckpointEventsCallback(JOB, publisher=publisher)
    timed_calls(callback, args, state, TrainerControl(), 500)  # warm up, as the benchmark
    Path(report).with_suffix(".ready").touch()
    started, durations = [], []
    deadline, stop = time.monotonic() + seconds, Path(report).with_suffix(".stop")
    while time.monotonic() < deadline and not stop.exists():
        durations += timed_calls(callback, args, state, TrainerControl(), CALLS_PER_ROUND, started)
    publisher.close(30)
    Path(report).write_text(
        json.dumps(
            {
                "calls": list(zip(started, durations, strict=True)),
                "sent": publisher.sent,
                "spooled": publisher.spooled,
                "dropped": publisher.dropped,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
