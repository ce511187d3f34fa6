"""Helpers of the RunPod tests: run the command line in-process, play a pod's events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from click.testing import CliRunner, Result

from ckpt_pipeline.cli import main
from producer.events import build_event, encode_event
from producer.wire import EVENT_FIELD, stream_key
from sink.writers.sqlite import SqliteWriter

API_KEY = "rp-secret-api-key-0123456789"
JOB_TOKEN = "row-token-s3cret"


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``ckpt-pipeline ARGS`` in this process (the suite's imports are already warm)."""
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def write_spec(folder: Path, job_id: str, **fields: Any) -> Path:
    """Write a minimal valid spec (relative output_dir: it lands on the pod's volume)."""
    spec = {"job_id": job_id, "model": "tiny", "dataset": "data.jsonl", "output_dir": "out"}
    path = folder / f"{job_id}.json"
    path.write_text(json.dumps({**spec, **fields}), encoding="utf-8")
    return path


def create_row(settings: Any, job_id: str, token: str = JOB_TOKEN) -> SqliteWriter:
    """Create the platform's pending row in the test's SQLite sink."""
    writer = SqliteWriter(settings.sink_url.removeprefix("sqlite:///"))
    writer.ensure_schema()
    writer.create_job(job_id, token)
    return writer


def runpod_env(api_url: str, **more: str) -> dict[str, str]:
    """The trusted processes' environment for the fake RunPod (polls at every pass)."""
    return {
        "RUNPOD_API_KEY": API_KEY,
        "RUNPOD_API_URL": api_url,
        "JOB_TOKEN": JOB_TOKEN,
        "CKPT_RUNPOD_POLL_S": "0",
        **more,
    }


class PodEvents:
    """Publishes a job's events with the pod's own credentials (the env RunPod was given)."""

    def __init__(self, pod_env: dict[str, str]) -> None:
        self.job_id = pod_env["JOB_ID"]
        self.client = redis.Redis.from_url(pod_env["REDIS_URL"])
        self.ts = 1_700_000_000.0

    def send(self, kind: str, step: int, metrics: dict | None = None, info: dict | None = None):
        """XADD one event, as the pod's publisher would."""
        self.ts += 1.0
        event = build_event(kind, self.job_id, step, step / 10, metrics, info, ts=self.ts)
        self.client.xadd(stream_key(self.job_id), {EVENT_FIELD: encode_event(event)})

    def run(self, *, end: str | None = "completed") -> None:
        """A short run: begin, logs, two evaluations with checkpoints, and ``end``."""
        self.send("train_begin", 0, info={"max_steps": 20, "num_train_epochs": 2})
        for step, loss, eval_loss in ((10, 1.2, 1.0), (20, 0.8, 0.9)):
            self.send("train_log", step, metrics={"loss": loss, "learning_rate": 1e-3})
            self.send("eval", step, metrics={"eval_loss": eval_loss})
            info = {"checkpoint": f"checkpoint-{step}", "retained": [f"checkpoint-{step}"]}
            self.send("checkpoint_saved", step, info=info)
        if end is not None:
            self.send("train_end", 20, metrics={"train_loss": 1.0}, info={"status": end})
