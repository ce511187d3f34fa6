"""Synthetic training jobs' events, and putting them into the streams as producers would.

Two generators, for two needs. :class:`JobEvents` yields one job's events one at a time,
endlessly and cheaply, each eval's ``eval_loss`` encoding its index (the benchmarks tell from
a row which eval it shows). :func:`synthetic_events` gives a finished run with what real
runs do to the pipeline (a crash and resume, replays, a NaN, a failed end), deterministic
per seed (the chaos experiments compare a faulty run with a fault-free one of the same
events).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Any

import redis

from producer.events import build_event, encode_event
from producer.wire import EVENT_FIELD, stream_key

# --- one event at a time ------------------------------------------------------------------


class JobEvents:
    """Wire events of one synthetic training job, produced one at a time.

    The sequence: ``train_begin``, then one event per step: ``train_log`` at step s, except
    that every ``eval_every``-th step is an ``eval`` (its ``eval_loss`` encodes the eval's
    index: ``2 + k / 10000``), each followed by a ``checkpoint_saved`` when ``saves`` (the last
    ``retained`` checkpoints stay). ``end()`` gives the ``train_end``.
    """

    def __init__(
        self,
        job_id: str,
        *,
        eval_every: int = 10,
        saves: bool = False,
        retained: int = 3,
        max_steps: int = 1000,
        separate_evals: bool = False,
    ) -> None:
        self.job_id = job_id
        self.eval_every = eval_every
        self.saves = saves
        self.retained = retained
        self.max_steps = max_steps
        self.separate_evals = separate_evals
        self.step = 0
        self.evals = 0
        self.started = False
        self._pending: list[tuple[str, str]] = []

    def next(self) -> tuple[str, str]:
        """Return (kind, encoded event) of the next event."""
        if self._pending:
            return self._pending.pop(0)
        if not self.started:
            self.started = True
            info = {
                "max_steps": self.max_steps,
                "num_train_epochs": 10,
                "resumed_from_step": 0,
                "save_total_limit": self.retained,
                "output_dir": f"/runs/{self.job_id}",
            }
            return "train_begin", self._encode("train_begin", 0, info=info)
        self.step += 1
        step = self.step
        if self.eval_every and step % self.eval_every == 0:
            events = self._eval(step)
            if self.separate_evals:  # a train_log at this step too, the eval after it
                self._pending.extend(events)
                return "train_log", self._train_log(step)
            self._pending.extend(events[1:])
            return events[0]
        return "train_log", self._train_log(step)

    def end(self) -> tuple[str, str]:
        """The ``train_end`` of the job."""
        return "train_end", self._encode("train_end", self.step, info={"status": "completed"})

    def take(self, count: int, *, end: bool = False) -> list[str]:
        """The next ``count`` encoded events (the last one a ``train_end`` when ``end``)."""
        events = [self.next()[1] for _ in range(count - 1 if end else count)]
        if end:
            events.append(self.end()[1])
        return events

    def _train_log(self, step: int) -> str:
        loss = 3.0 * math.exp(-step / 400) + 0.5
        metrics = {"loss": loss, "learning_rate": 5e-4 * (1 - step / 2000), "grad_norm": 1.25}
        return self._encode("train_log", step, metrics=metrics)

    def _eval(self, step: int) -> list[tuple[str, str]]:
        self.evals += 1
        metrics = {
            "eval_loss": 2.0 + self.evals / 10000,
            "eval_runtime": 0.5,
            "eval_samples_per_second": 200.0,
        }
        events = [("eval", self._encode("eval", step, metrics=metrics))]
        if self.saves:
            first = max(1, self.evals - self.retained + 1)
            names = [f"checkpoint-{k * self.eval_every}" for k in range(first, self.evals + 1)]
            info = {"checkpoint": f"checkpoint-{step}", "retained": names}
            events.append(("checkpoint_saved", self._encode("checkpoint_saved", step, info=info)))
        return events

    def _encode(self, kind: str, step: int, metrics=None, info=None) -> str:
        epoch = step / 100
        return encode_event(build_event(kind, self.job_id, step, epoch, metrics, info))


def typical_job(job_id: str, train_logs: int = 1000, evals: int = 100) -> list[str]:
    """A finished typical job: train_begin, ``train_logs`` logs, ``evals`` evals each with a
    checkpoint save (3 retained), train_end."""
    every = max(1, train_logs // evals)
    job = JobEvents(job_id, eval_every=every, saves=True, separate_evals=True, max_steps=train_logs)
    events = [job.next()[1]]
    while job.step < train_logs or job._pending:
        events.append(job.next()[1])
    events.append(job.end()[1])
    return events


# --- finished runs with faults of their own -----------------------------------------------


def synthetic_run(job_id: str, seed: int, count: int = 500, t0: float = 1.7e9) -> list[str]:
    """``synthetic_events``, encoded for the wire."""
    return [encode_event(event) for event in synthetic_events(job_id, seed, count, t0)]


def synthetic_events(
    job_id: str, seed: int, count: int = 500, t0: float = 1.7e9
) -> list[dict[str, Any]]:
    """A deterministic run of exactly ``count`` events for ``job_id``.

    A train_begin, a train_log per step, an eval every 10 steps, a checkpoint_saved every 20
    (3 retained); about half the runs crash and resume from their last checkpoint (a second
    train_begin, later timestamps, different losses); a few events are published twice
    (at-least-once delivery); a rare NaN eval loss; a train_end (completed or failed) last.
    """
    rng = random.Random(f"{seed}:{job_id}")
    max_steps = 400
    events: list[dict[str, Any]] = []
    resume_at = rng.randrange(150, 250) if rng.random() < 0.5 else None
    attempt, step, saves = 0, 0, []

    def emit(kind, metrics=None, info=None):
        ts = t0 + attempt * 10_000 + step * 2.0 + {"train_begin": 0.0}.get(kind, 1.0)
        epoch = round(step / 40, 4)
        events.append(build_event(kind, job_id, step, epoch, metrics, info, ts=ts))

    def begin(resumed_from: int):
        info = {"max_steps": max_steps, "num_train_epochs": 10, "resumed_from_step": resumed_from}
        emit("train_begin", info={**info, "save_total_limit": 3, "output_dir": f"/runs/{job_id}"})

    begin(0)
    while len(events) < count - 1:
        step += 1
        drift = 0.05 * attempt
        loss = 3.0 * math.exp(-step / 120) + 0.2 + drift + rng.uniform(-0.02, 0.02)
        rate, norm = 1e-3 * (1 - step / 500), rng.uniform(0.5, 2.0)
        emit("train_log", {"loss": loss, "learning_rate": rate, "grad_norm": norm})
        if step % 10 == 0 and len(events) < count - 1:
            value = 2.8 * math.exp(-step / 150) + 0.5 + (step / 500) ** 2 + drift
            value = math.nan if rng.random() < 0.01 else value
            emit("eval", {"eval_loss": value, "eval_runtime": 0.1})
        if step % 20 == 0 and len(events) < count - 1:
            saves = [*saves, step][-3:]
            retained = [f"checkpoint-{s}" for s in saves]
            emit(
                "checkpoint_saved", info={"checkpoint": f"checkpoint-{step}", "retained": retained}
            )
        if len(events) < count - 1 and rng.random() < 0.02:
            events.append(events[rng.randrange(len(events))])  # a replayed event
        if resume_at is not None and step == resume_at and len(events) < count - 1:
            attempt, step = 1, (saves[-1] if saves else 0)
            saves = [s for s in saves if s <= step]
            resume_at = None
            begin(step)
    status = "failed" if rng.random() < 0.1 else "completed"
    info = {"status": status, "error": "CUDA out of memory" if status == "failed" else None}
    emit("train_end", {"train_runtime": 12.5, "train_loss": 0.4}, info)
    return events[:count]


# --- into the streams ---------------------------------------------------------------------


def xadd_all(
    client: redis.Redis, streams: list[tuple[str, list[str]]], chunk: int = 1000
) -> list[list[bytes]]:
    """XADD the events of several jobs, interleaved by job, in pipelined chunks.

    Returns:
        Per job, the entry ids in order.
    """
    ids: list[list[bytes]] = [[] for _ in streams]
    cursors = [0] * len(streams)
    keys_ = [stream_key(job) for job, _ in streams]
    pipe = client.pipeline(transaction=False)
    pending: list[int] = []
    remaining = sum(len(events) for _, events in streams)
    while remaining:
        for index, (_, events) in enumerate(streams):
            if cursors[index] < len(events):
                pipe.xadd(keys_[index], {EVENT_FIELD: events[cursors[index]]})
                pending.append(index)
                cursors[index] += 1
                remaining -= 1
                if len(pending) >= chunk:
                    for job_index, entry_id in zip(pending, pipe.execute(), strict=True):
                        ids[job_index].append(entry_id)
                    pending = []
    if pending:
        for job_index, entry_id in zip(pending, pipe.execute(), strict=True):
            ids[job_index].append(entry_id)
    return ids


def xadd_many(client: redis.Redis, job_id: str, encoded: Iterable[str | bytes]) -> None:
    """Append raw ``event`` fields to a job's stream in one pipelined round."""
    pipe = client.pipeline(transaction=False)
    for payload in encoded:
        pipe.xadd(stream_key(job_id), {EVENT_FIELD: payload})
    pipe.execute()
