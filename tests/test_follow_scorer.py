"""The closed loop (issue 11, part 4): ``CheckpointEventsCallback(follow_scorer=True)``.

Each evaluation waits (bounded) for the scorer's decision covering it and hands its score to
Hugging Face as ``eval_checkpoint_score``, so ``metric_for_best_model="checkpoint_score"``
makes rotation, ``load_best_model_at_end`` and ``EarlyStoppingCallback`` follow the composite.

Real parts only: a private redis-server, real ``Trainer`` runs of a tiny GPT-2 that overfits,
and the scorer as ``ckpt-pipeline work`` in another process. The fast tests at the top play
the scorer themselves: a thread reads the job's stream and writes the decision hash. Every
composite score a test relies on is computed here, from ``log_history``, with the formula of
DESIGN section 4, independently of the scorer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from ckpt_pipeline.demo.model import build_tiny_model, corpus_text, write_jsonl_dataset
from ckpt_pipeline.testing.local_redis import LocalRedis, free_port
from producer import CheckpointEventsCallback, EventPublisher
from producer.callback import DECISION_SOCKET_TIMEOUT_S, SCORE_METRIC
from producer.publisher import flush_spool_dir
from producer.wire import (
    EVENT_FIELD,
    checkpoint_step,
    decision_field,
    decision_key,
    decode_decision_entry,
    encode_decision_entry,
    stream_key,
)
from remote.dataset import load_texts, split_texts, tokenize_blocks
from remote.training import load_tokenizer
from scorer_worker.registry import register_job
from sink.writers.sqlite import SqliteWriter

REPO = Path(__file__).resolve().parent.parent
TOKEN = "follow-token"
CALLBACK_LOG = "producer.callback"

# The overfitting run: 22 training texts of 64 characters memorised by a 2-layer GPT-2,
# evaluated on 10 held-out texts every 5 steps. Eval loss bottoms out near step 35 while the
# train loss keeps falling, so the composite score (which charges the growing train/eval gap)
# prefers an earlier checkpoint than eval loss does. About 6 s for 60 steps on one CPU thread.
MODEL = {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 64}
CORPUS_CHARS, CHUNK_CHARS, EVAL_FRACTION, SEED = 2000, 64, 0.3, 42
EVERY = 5  # steps between train logs, evaluations and checkpoints
RUN = {"max_steps": 60, "learning_rate": 3e-3, "save_total_limit": 2}


# ---------------------------------------------------------------- independent computations


def composite_scores(history: list[dict]) -> dict[int, float]:
    """Each evaluation's score by step, by the formula of DESIGN section 4 (default profile)."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    scores: dict[int, float] = {}
    previous_loss = previous_count = None
    for entry in history:
        if "eval_loss" not in entry:
            continue
        step, eval_loss = entry["step"], entry["eval_loss"]
        paired = [loss for s, loss in train if s <= step]
        train_loss = paired[-1] if paired else None
        improved = previous_count is None or eval_loss < previous_loss
        count = 0 if improved else previous_count + 1
        gap = 0.0 if train_loss is None else abs(train_loss - eval_loss) / max(eval_loss, 0.001)
        scores[step] = (
            0.5 * eval_loss
            + 0.3 * gap
            + 0.1 * min(math.exp(eval_loss) / 20, 1.0)
            - (0.1 if count == 0 else 0.0)
        )
        previous_loss, previous_count = eval_loss, count
    return scores


def eval_losses(history: list[dict]) -> dict[int, float]:
    return {h["step"]: h["eval_loss"] for h in history if "eval_loss" in h}


def lowest(values: dict[int, float], among: set[int] | None = None) -> int:
    """The step of the lowest value (ties to the lower step), among ``among`` if given."""
    return min((v, s) for s, v in values.items() if among is None or s in among)[1]


def early_stop_step(values: dict[int, float], patience: int) -> int | None:
    """Where EarlyStoppingCallback(patience) on a lower-is-better metric stops, or None."""
    best, waited = None, 0
    for step in sorted(values):
        waited = 0 if best is None or values[step] < best else waited + 1
        if waited >= patience:
            return step
        best = values[step] if best is None else min(best, values[step])
    return None


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Two cores run this process and the scorer's: oversubscribed OpenMP threads made a 6 s
    # run take 50 s.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The tiny model and the overfitting data set, built once (offline)."""
    folder = tmp_path_factory.mktemp("follow-assets")
    model = build_tiny_model(folder / "model", **MODEL)
    data = write_jsonl_dataset(
        folder / "data.jsonl", corpus_text()[:CORPUS_CHARS], chunk_chars=CHUNK_CHARS
    )
    return SimpleNamespace(model=str(model), data=str(data))


def make_trainer(
    assets: Any,
    output_dir: Path | str,
    callbacks: list,
    *,
    metric: str | None = None,
    max_steps: int = RUN["max_steps"],
) -> Trainer:
    """A Trainer of the overfitting run; ``metric`` None leaves Hugging Face's default."""
    tokenizer = load_tokenizer(assets.model)
    train_texts, eval_texts = split_texts(load_texts(assets.data), EVAL_FRACTION, SEED)
    set_seed(SEED)
    best = {} if metric is None else {"metric_for_best_model": metric, "greater_is_better": False}
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=RUN["learning_rate"],
        eval_strategy="steps",
        eval_steps=EVERY,
        save_strategy="steps",
        save_steps=EVERY,
        save_total_limit=RUN["save_total_limit"],
        load_best_model_at_end=True,
        **best,
        logging_strategy="steps",
        logging_steps=EVERY,
        seed=SEED,
        data_seed=SEED,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_only_model=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=AutoModelForCausalLM.from_pretrained(assets.model),
        args=args,
        data_collator=default_data_collator,
        train_dataset=tokenize_blocks(train_texts, tokenizer, CHUNK_CHARS),
        eval_dataset=tokenize_blocks(eval_texts, tokenizer, CHUNK_CHARS),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    return trainer


def checkpoint_steps(output_dir: Path) -> set[int]:
    return {s for p in output_dir.iterdir() if (s := checkpoint_step(p.name)) is not None}


def start_scorer(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``ckpt-pipeline work`` (pump, scoring and sink workers) in another process."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "ckpt_pipeline.cli", "work"],
            env=env,
            cwd=REPO,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; each is stopped (by its own handle) at the end."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        stop_process(process)


def register(redis_url: str, sqlite_url: str, job: str) -> Path:
    """Create the job's pending row and register the job; return the SQLite file."""
    db = Path(sqlite_url.removeprefix("sqlite:///"))
    writer = SqliteWriter(db)
    writer.ensure_schema()
    writer.create_job(job, TOKEN, model_name="tiny")
    writer.close()
    client = redis.Redis.from_url(redis_url)
    register_job(client, job, TOKEN)
    client.close()
    return db


def settled_row(db: Path, redis_url: str, job: str, timeout_s: float = 60.0) -> dict:
    """The job's row once the sink wrote the state after ``train_end`` and the last decision.

    Events are folded in stream order, so a completed row holds every earlier event too.
    """
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout_s
    row: dict | None = None
    try:
        while time.monotonic() < deadline:
            version = client.hget(decision_key(job), "version")
            row = SqliteWriter(db).read_job(job)
            if (
                version is not None
                and row is not None
                and row["status"] == "completed"
                and row["scoring_version"] >= int(version)
            ):
                return row
            time.sleep(0.1)
    finally:
        client.close()
    pytest.fail(f"the row did not settle: {row}")


def decided_scores(redis_url: str, job: str, steps: list[int]) -> dict[int, float]:
    client = redis.Redis.from_url(redis_url)
    raws = client.hmget(decision_key(job), [decision_field(s) for s in steps])
    client.close()
    return {s: decode_decision_entry(raw)[0] for s, raw in zip(steps, raws, strict=True) if raw}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def same_weights(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> bool:
    state = model.state_dict()
    return all(torch.equal(state[name].cpu(), tensor) for name, tensor in saved.items())


def fake_scorer(
    redis_url: str, job: str, score_of: Callable[[int, Any], float], delay_s: float = 0.0
) -> tuple[Callable[[], None], list[dict]]:
    """A thread that scores each eval event of ``job`` as the real scorer's decision would.

    Returns:
        A function that stops the thread (and waits for it), and the eval events it saw.
    """
    stop, seen = threading.Event(), []
    client = redis.Redis.from_url(redis_url)

    def run() -> None:
        last = "0-0"
        while not stop.is_set():
            for _key, entries in client.xread({stream_key(job): last}, block=50) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    event = json.loads(fields[EVENT_FIELD.encode()])
                    if event["kind"] != "eval":
                        continue
                    seen.append(event)
                    time.sleep(delay_s)
                    loss = event["metrics"].get("eval_loss")
                    value = encode_decision_entry(score_of(event["step"], loss), loss)
                    client.hset(decision_key(job), decision_field(event["step"]), value)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(5)
        client.close()

    return halt, seen


def hf_evaluate(callback: CheckpointEventsCallback, state: Any, metrics: dict) -> dict:
    """What ``Trainer.evaluate`` does with an evaluation's metrics (transformers 5.x).

    ``log()`` adds the epoch, appends a copy to ``log_history`` and passes the same dict to
    ``on_log``; ``on_evaluate`` gets that dict afterwards.
    """
    metrics["epoch"] = state.epoch
    state.log_history.append({**metrics, "step": state.global_step})
    callback.on_log(None, state, None, logs=metrics)
    callback.on_evaluate(None, state, None, metrics=metrics)
    return metrics


def train_state(step: int) -> SimpleNamespace:
    return SimpleNamespace(
        is_world_process_zero=True, global_step=step, epoch=step / 10, max_steps=100, log_history=[]
    )


def begin(callback: CheckpointEventsCallback, state: Any, output_dir: Path) -> None:
    args = SimpleNamespace(num_train_epochs=1, save_total_limit=None, output_dir=str(output_dir))
    callback.on_train_begin(args, state, None)


def eval_events(client: redis.Redis, job: str) -> list[dict]:
    events = [json.loads(f[EVENT_FIELD.encode()]) for _, f in client.xrange(stream_key(job))]
    return [e for e in events if e["kind"] == "eval"]


# ---------------------------------------------------------------- the callback on its own


def test_decision_timeout_must_be_a_non_negative_number() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="decision_timeout_s"):
            CheckpointEventsCallback("fs-bad", follow_scorer=True, decision_timeout_s=bad)


def test_off_by_default_reads_no_decision_and_adds_no_metric(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job = "fs-off"
    redis_client.hset(decision_key(job), decision_field(5), encode_decision_entry(0.5, 2.0))
    callback = CheckpointEventsCallback(job, redis_server.url, spool_dir=tmp_path / "spool")
    state = train_state(5)
    begin(callback, state, tmp_path)

    metrics = hf_evaluate(callback, state, {"eval_loss": 2.0, "eval_runtime": 0.1})
    callback.publisher.flush()

    assert callback.follow_scorer is False
    assert SCORE_METRIC not in metrics and SCORE_METRIC not in state.log_history[-1]
    assert callback._reader is None  # never touched the decision
    assert [e["metrics"] for e in eval_events(redis_client, job)] == [
        {"eval_loss": 2.0, "eval_runtime": 0.1}
    ]
    callback.publisher.close()


def test_waits_for_the_decision_covering_this_evaluation(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job = "fs-wait"
    # A score left at this step by an earlier attempt (another eval loss) must not be taken.
    redis_client.hset(decision_key(job), decision_field(5), encode_decision_entry(9.0, 3.0))
    stop, seen = fake_scorer(redis_server.url, job, lambda step, loss: loss / 2, delay_s=0.2)
    callback = CheckpointEventsCallback(
        job, redis_server.url, spool_dir=tmp_path / "spool", follow_scorer=True
    )
    state = train_state(5)
    begin(callback, state, tmp_path)
    try:
        started = time.monotonic()
        metrics = hf_evaluate(callback, state, {"eval_loss": 2.5, "eval_runtime": 0.1})
        elapsed = time.monotonic() - started
    finally:
        stop()

    assert metrics[SCORE_METRIC] == 1.25
    assert state.log_history[-1][SCORE_METRIC] == 1.25  # trainer_state.json records it
    assert 0.2 <= elapsed < 2.0  # it did wait for the scorer, and no longer than needed
    # Published once (from on_log; on_evaluate saw the same evaluation), without the score.
    assert [e["metrics"] for e in seen] == [{"eval_loss": 2.5, "eval_runtime": 0.1}]
    callback.on_train_end(SimpleNamespace(), state, None)
    assert len(eval_events(redis_client, job)) == 1


def test_on_evaluate_alone_or_with_a_copy_still_publishes_once(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job = "fs-fallback"
    stop, seen = fake_scorer(redis_server.url, job, lambda step, loss: step + loss)
    callback = CheckpointEventsCallback(
        job, redis_server.url, spool_dir=tmp_path / "spool", follow_scorer=True
    )
    state = train_state(5)
    begin(callback, state, tmp_path)
    try:
        # A Trainer that does not log evaluations: on_evaluate does the whole job.
        alone = {"eval_loss": 1.5, "epoch": 0.5}
        callback.on_evaluate(None, state, None, metrics=alone)
        # A Trainer whose log() passes a copy: on_evaluate's dict lacks the score.
        state.global_step = 10
        logged = {"eval_loss": 1.25, "eval_runtime": 0.2, "epoch": 1.0}
        copy = dict(logged)
        callback.on_log(None, state, None, logs=logged)
        callback.on_evaluate(None, state, None, metrics=copy)
    finally:
        stop()

    assert alone[SCORE_METRIC] == 6.5
    assert logged[SCORE_METRIC] == copy[SCORE_METRIC] == 11.25
    assert [(e["step"], e["metrics"]) for e in seen] == [
        (5, {"eval_loss": 1.5}),
        (10, {"eval_loss": 1.25, "eval_runtime": 0.2}),
    ]
    callback.publisher.close()


def test_no_decision_in_time_gives_inf_warns_once_and_names_each_step(
    redis_client: redis.Redis,
    redis_server: LocalRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=CALLBACK_LOG)
    callback = CheckpointEventsCallback(
        "fs-late",
        redis_server.url,
        spool_dir=tmp_path / "spool",
        follow_scorer=True,
        decision_timeout_s=0.3,
    )
    state = train_state(5)
    begin(callback, state, tmp_path)
    timings = []
    for step in (5, 10):
        state.global_step = step
        started = time.monotonic()
        metrics = hf_evaluate(callback, state, {"eval_loss": 2.0 - step / 100})
        timings.append(time.monotonic() - started)
        assert metrics[SCORE_METRIC] == math.inf

    assert all(0.3 <= t < 1.5 for t in timings), timings  # bounded by decision_timeout_s
    records = [r for r in caplog.records if r.name == CALLBACK_LOG]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "+inf" in warnings[0].getMessage()
    named = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert any("step 5 " in m and "+inf" in m for m in named)
    assert any("step 10 " in m and "+inf" in m for m in named)
    callback.publisher.close()


def test_unreachable_redis_costs_no_wait(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    callback = CheckpointEventsCallback(
        "fs-down", url, spool_dir=tmp_path / "spool", follow_scorer=True, decision_timeout_s=10
    )
    state = train_state(0)
    begin(callback, state, tmp_path)
    callback.publisher.flush()  # train_begin went to the spool
    assert callback.publisher.redis_unreachable

    state.global_step = 5
    started = time.monotonic()
    metrics = hf_evaluate(callback, state, {"eval_loss": 2.0})
    elapsed = time.monotonic() - started

    assert metrics[SCORE_METRIC] == math.inf
    assert elapsed < 0.1
    assert callback._reader is None  # not even one read was tried
    callback.publisher.close()
    assert callback.publisher.spool.pending()  # the evaluation waits in the spool


def test_a_hung_redis_costs_one_short_timeout_then_no_wait(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis").start()
    callback = CheckpointEventsCallback(
        "fs-hung", server.url, spool_dir=tmp_path / "spool", follow_scorer=True
    )
    state = train_state(0)
    begin(callback, state, tmp_path)
    assert callback.publisher.flush() and not callback.publisher.redis_unreachable
    os.kill(server.process.pid, signal.SIGSTOP)  # Redis hangs: connects, never answers
    try:
        state.global_step = 5
        started = time.monotonic()
        first = hf_evaluate(callback, state, {"eval_loss": 2.0})
        took_first = time.monotonic() - started
        # The publisher's own send of that evaluation times out too, and from then on
        # evaluations do not wait at all.
        deadline = time.monotonic() + 10
        while not callback.publisher.redis_unreachable and time.monotonic() < deadline:
            time.sleep(0.05)
        state.global_step = 10
        started = time.monotonic()
        second = hf_evaluate(callback, state, {"eval_loss": 1.9})
        took_second = time.monotonic() - started
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        callback.publisher.close(5)
        server.stop()

    assert first[SCORE_METRIC] == second[SCORE_METRIC] == math.inf
    # One read timeout (no retry on a timeout), far below decision_timeout_s (10 s).
    assert took_first < DECISION_SOCKET_TIMEOUT_S + 0.4, took_first
    assert took_second < 0.1, took_second


def test_reads_the_decision_with_hmget_only(
    redis_client: redis.Redis, redis_server: LocalRedis, tmp_path: Path
) -> None:
    job, user = "fs-acl", "fs-acl-pod"
    # What the pod's user may do: XADD to its stream, HMGET its decision. Nothing else.
    redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=["+pod-secret"],
        keys=[stream_key(job)],
        commands=["+xadd", "+hmget"],
        reset=True,
    )
    redis_client.execute_command("ACL", "SETUSER", user, f"%R~{decision_key(job)}")
    port = redis_server.url.rsplit(":", 1)[1]
    pod_url = f"redis://{user}:pod-secret@127.0.0.1:{port}"
    stop, _ = fake_scorer(redis_server.url, job, lambda step, loss: 0.75)
    callback = CheckpointEventsCallback(
        job, pod_url, spool_dir=tmp_path / "spool", follow_scorer=True, decision_timeout_s=5
    )
    state = train_state(5)
    try:
        begin(callback, state, tmp_path)
        metrics = hf_evaluate(callback, state, {"eval_loss": 2.0})
        assert metrics[SCORE_METRIC] == 0.75
        assert not callback.publisher.redis_unreachable
    finally:
        stop()
        callback.publisher.close()
        redis_client.acl_deluser(user)


# ---------------------------------------------------------------- real Trainer, real scorer


@pytest.fixture
def scorer(
    pipeline_env, sqlite_url: str, tmp_path: Path, processes: list
) -> Iterator[SimpleNamespace]:
    """``ckpt-pipeline work`` against the private servers, in another process."""
    env = dict(os.environ)
    processes.append(start_scorer(env, tmp_path / "scorer.log"))
    yield SimpleNamespace(env=env, redis_url=env["REDIS_URL"], sqlite_url=sqlite_url)


@pytest.mark.slow
@pytest.mark.parametrize("loop", [False, True], ids=["control-without-loop", "with-loop"])
def test_rotation_load_and_row_follow_the_composite_only_with_the_loop(
    loop: bool, assets: SimpleNamespace, scorer: SimpleNamespace, tmp_path: Path
) -> None:
    job = f"fs-rot-{int(loop)}"
    db = register(scorer.redis_url, scorer.sqlite_url, job)
    output = tmp_path / "out"
    callback = CheckpointEventsCallback(
        job, scorer.redis_url, spool_dir=tmp_path / "spool", follow_scorer=loop
    )
    trainer = make_trainer(assets, output, [callback], metric="checkpoint_score" if loop else None)
    trainer.train()

    history = trainer.state.log_history
    scores, losses = composite_scores(history), eval_losses(history)
    best, lowest_loss, last = lowest(scores), lowest(losses), max(scores)
    # The scenario is real: the model overfits, and the composite picks an earlier checkpoint.
    assert best < lowest_loss < last, (scores, losses)
    kept = checkpoint_steps(output)
    row = settled_row(db, scorer.redis_url, job)

    if not loop:
        # Hugging Face alone keeps the eval-loss best and the newest: the composite best is
        # deleted, loaded is the eval-loss best, and the row has to fall back.
        assert kept == {lowest_loss, last}
        assert trainer.state.best_model_checkpoint == str(output / f"checkpoint-{lowest_loss}")
        assert row["best_checkpoint_step"] == lowest(scores, among=kept) != best
        return

    # The loop: every evaluation carries the scorer's score, which is the composite.
    carried = {h["step"]: h[SCORE_METRIC] for h in history if "eval_loss" in h}
    assert carried == pytest.approx(scores, rel=1e-9, abs=1e-12)
    assert carried == decided_scores(scorer.redis_url, job, sorted(carried))
    best_folder = output / f"checkpoint-{best}"
    assert kept == {best, last}  # rotation kept the composite best
    assert trainer.state.best_model_checkpoint == str(best_folder)
    assert trainer.state.best_metric == carried[best]
    on_disk = json.loads((output / f"checkpoint-{last}" / "trainer_state.json").read_text())
    assert on_disk["best_model_checkpoint"] == str(best_folder)
    assert on_disk["best_metric"] == carried[best]
    assert [h.get(SCORE_METRIC) for h in on_disk["log_history"] if "eval_loss" in h] == [
        carried[s] for s in sorted(carried)
    ]
    # The model in memory at the end is the composite best's, not the last step's.
    best_weights = weights(best_folder)
    assert not same_weights(trainer.model, weights(output / f"checkpoint-{last}"))
    assert same_weights(trainer.model, best_weights)
    # The row names the same checkpoint in all its best_* columns.
    assert row["best_step"] == row["best_checkpoint_step"] == best
    assert row["best_eval_loss"] == losses[best]
    assert row["best_checkpoint_path"] == str(best_folder.resolve())


@pytest.mark.slow
@pytest.mark.parametrize("order", ["callback-first", "early-stopping-first"])
def test_early_stopping_counts_evaluations_without_composite_improvement(
    order: str, assets: SimpleNamespace, scorer: SimpleNamespace, tmp_path: Path
) -> None:
    job = f"fs-stop-{order}"
    patience = 2
    register(scorer.redis_url, scorer.sqlite_url, job)
    output = tmp_path / "out"
    callback = CheckpointEventsCallback(
        job, scorer.redis_url, spool_dir=tmp_path / "spool", follow_scorer=True
    )
    stopper = EarlyStoppingCallback(early_stopping_patience=patience)
    callbacks = [callback, stopper] if order == "callback-first" else [stopper, callback]
    trainer = make_trainer(assets, output, callbacks, metric="checkpoint_score")
    trainer.train()

    history = trainer.state.log_history
    scores = composite_scores(history)
    stop = early_stop_step(scores, patience)
    assert stop is not None and stop < RUN["max_steps"]
    assert trainer.state.global_step == stop == max(scores)
    # Early stopping on eval loss would not have stopped there.
    assert early_stop_step(eval_losses(history), patience) is None
    best = lowest(scores)
    assert trainer.state.best_model_checkpoint == str(output / f"checkpoint-{best}")
    assert checkpoint_steps(output) == {best, stop}


# ---------------------------------------------------------------- two processes (gloo)

RANK_SCRIPT = r"""
import json, os, sys, threading
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from transformers import TrainerCallback

sys.path.insert(0, os.environ["FS_TESTS"])
from test_follow_scorer import make_trainer, SCORE_METRIC
from producer import CheckpointEventsCallback

dist.init_process_group("gloo")
rank = dist.get_rank()
job, url, out = os.environ["FS_JOB"], os.environ["REDIS_URL"], os.environ["FS_OUT"]
assets = type("Assets", (), json.loads(os.environ["FS_ASSETS"]))


class Seen(TrainerCallback):
    def __init__(self):
        self.values, self.publishing = [], []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.values.append([state.global_step, metrics.get(SCORE_METRIC)])
        names = [t.name for t in threading.enumerate()]
        self.publishing.append(any(n.startswith("ckpt-publisher-") for n in names))


seen = Seen()
callback = CheckpointEventsCallback(
    job, url, spool_dir=os.path.join(out, "spool"), follow_scorer=True, decision_timeout_s=30
)
trainer = make_trainer(assets, os.path.join(out, "run"), [seen, callback],
                       metric="checkpoint_score", max_steps=int(os.environ["FS_STEPS"]))
trainer.train()
with open(os.path.join(out, f"rank{rank}.json"), "w") as handle:
    json.dump({"world": dist.get_world_size(), "seen": seen.values,
               "publishing": seen.publishing,
               "best": trainer.state.best_model_checkpoint}, handle)
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_every_rank_gets_the_same_score(
    assets: SimpleNamespace, scorer: SimpleNamespace, tmp_path: Path, processes: list
) -> None:
    job, steps = "fs-gloo", 10
    register(scorer.redis_url, scorer.sqlite_url, job)
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    port = str(free_port())
    ranks = []
    for rank in (0, 1):
        env = {
            **scorer.env,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), scorer.env.get("PYTHONPATH", "")]),
            "FS_TESTS": str(Path(__file__).parent),
            "FS_JOB": job,
            "FS_OUT": str(tmp_path),
            "FS_STEPS": str(steps),
            "FS_ASSETS": json.dumps(vars(assets)),
        }
        log_path = tmp_path / f"rank{rank}.log"
        with open(log_path, "wb") as log_file:
            ranks.append(
                subprocess.Popen(
                    [sys.executable, str(script)],
                    env=env,
                    cwd=REPO,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
        processes.append(ranks[-1])
    for rank, process in enumerate(ranks):
        try:
            code = process.wait(180)
        except subprocess.TimeoutExpired:
            code = None
        log_text = (tmp_path / f"rank{rank}.log").read_text()[-3000:]
        assert code == 0, f"rank {rank} exited with {code}:\n{log_text}"

    zero, one = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert zero["world"] == one["world"] == 2
    evaluated = list(range(EVERY, steps + 1, EVERY))
    assert [s for s, _ in zero["seen"]] == evaluated
    decided = decided_scores(scorer.redis_url, job, evaluated)
    assert zero["seen"] == one["seen"] == [[s, decided[s]] for s in evaluated]
    assert all(math.isfinite(v) for _, v in zero["seen"])
    assert zero["best"] == one["best"] is not None
    assert all(zero["publishing"]) and not any(one["publishing"])  # only rank zero publishes


# ---------------------------------------------------------------- Redis down mid-training


class OutageAt(TrainerCallback):
    """At ``step``, stops the scorer and the Redis server, as an outage would."""

    def __init__(self, step: int, server: LocalRedis, scorer: subprocess.Popen) -> None:
        self.step, self.server, self.scorer = step, server, scorer

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            stop_process(self.scorer)
            self.server.stop()  # SIGTERM: the append-only file is flushed


class Timed(CheckpointEventsCallback):
    """Records how long the callback's hooks take at each evaluation."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.took: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        started = time.monotonic()
        super().on_log(args, state, control, logs=logs, **kwargs)
        if logs and "eval_loss" in logs:
            self.took[state.global_step] = time.monotonic() - started

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        started = time.monotonic()
        super().on_evaluate(args, state, control, metrics=metrics, **kwargs)
        self.took[state.global_step] += time.monotonic() - started


@pytest.mark.slow
def test_redis_down_costs_no_wait_and_the_row_still_picks_right(
    assets: SimpleNamespace,
    sqlite_url: str,
    tmp_path: Path,
    processes: list,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=CALLBACK_LOG)
    job, outage_step = "fs-outage", 12
    server = LocalRedis(tmp_path / "redis", appendonly=True).start()
    try:
        env = {**os.environ, "REDIS_URL": server.url, "CKPT_SINK": sqlite_url}
        db = register(server.url, sqlite_url, job)
        processes.append(start_scorer(env, tmp_path / "scorer.log"))
        callback = Timed(
            job, server.url, spool_dir=tmp_path / "spool", follow_scorer=True, decision_timeout_s=10
        )
        output = tmp_path / "out"
        outage = OutageAt(outage_step, server, processes[-1])
        trainer = make_trainer(
            assets, output, [outage, callback], metric="checkpoint_score", max_steps=30
        )
        started = time.monotonic()
        trainer.train()
        took_training = time.monotonic() - started

        history = trainer.state.log_history
        carried = {h["step"]: h[SCORE_METRIC] for h in history if "eval_loss" in h}
        before = [s for s in carried if s < outage_step]
        during = [s for s in carried if s > outage_step]
        assert before == [5, 10] and during == [15, 20, 25, 30]
        assert all(math.isfinite(carried[s]) for s in before)
        assert all(carried[s] == math.inf for s in during)
        # No wait beyond the spool check while Redis is down (decision_timeout_s is 10).
        assert max(callback.took[s] for s in during) < 0.5, callback.took
        assert took_training < 60
        records = [r for r in caplog.records if r.name == CALLBACK_LOG]
        assert len([r for r in records if r.levelno == logging.WARNING]) == 1
        infos = [r.getMessage() for r in records if r.levelno == logging.INFO]
        for step in during:
            assert any(f"step {step} " in m and "+inf" in m for m in infos), (step, infos)

        # Redis comes back, the spool is delivered, and the scorer catches up.
        assert callback.publisher.spool.pending()
        server = LocalRedis(tmp_path / "redis", appendonly=True, port=server.port).start()
        processes.append(start_scorer(env, tmp_path / "scorer.log"))
        assert flush_spool_dir(tmp_path / "spool", server.url) == {job: 0}
        row = settled_row(db, server.url, job)

        kept = checkpoint_steps(output)
        right = lowest(composite_scores(history), among=kept)
        assert row["best_step"] == row["best_checkpoint_step"] == right
        assert row["best_checkpoint_path"] == str((output / f"checkpoint-{right}").resolve())
    finally:
        server.stop()


def test_the_publisher_reports_an_unreachable_redis_and_its_return(
    redis_server: LocalRedis, tmp_path: Path
) -> None:
    port = free_port()
    publisher = EventPublisher(
        "fs-flag", f"redis://127.0.0.1:{port}/0", spool_dir=tmp_path, retry_max_s=0.1
    )
    assert publisher.redis_unreachable is False  # nothing tried yet
    publisher.emit("train_begin", 0, 0.0, info={"max_steps": 1, "resumed_from_step": 0})
    publisher.flush()
    assert publisher.redis_unreachable is True
    server = LocalRedis(tmp_path / "redis", port=port).start()
    try:
        publisher.emit("train_end", 1, 1.0, info={"status": "completed"})
        deadline = time.monotonic() + 10
        while publisher.redis_unreachable and time.monotonic() < deadline:
            publisher._wake.set()
            time.sleep(0.05)
        assert publisher.redis_unreachable is False
        publisher.close()
        assert not publisher.spool.pending()
    finally:
        server.stop()
