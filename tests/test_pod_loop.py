"""The closed loop on a pod (issue 11, part 5): the rendered pod script, run as a subprocess
with the job's own Redis credentials, follows the scorer through its read-only decision key,
so rotation, early stopping and the model saved to ``<output_dir>/best`` follow the composite
score; and the spec fields that drive it.

The composite best is computed here, independently, from ``log_history`` with the formula of
DESIGN section 4, which ``test_the_independent_formula_matches_the_design_table`` pins.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import EarlyStoppingCallback

from ckpt_pipeline.demo.model import (
    build_tiny_model,
    corpus_text,
    prepare_overfit_demo,
    write_jsonl_dataset,
)
from producer import CheckpointEventsCallback
from remote.arguments import training_arguments
from remote.credentials import create_pod_user
from remote.render import read_embedded, render_script
from remote.schema import SpecError
from remote.spec import validate_spec
from remote.training import BEST_DIR, build_trainer
from scorer_worker.registry import record_pod_user, register_job
from sink.writers.sqlite import SqliteWriter

MINIMAL = {"job_id": "spec-job", "model": "m", "dataset": "d.jsonl", "output_dir": "out"}
# The demo's data and model, 20 epochs (100 steps), one evaluation and save per 10 steps:
# with these seeds the eval loss is lowest at step 50, the composite score at step 40, and two
# evaluations without composite improvement stop the run at step 60.
LOOP_SPEC = {
    "num_train_epochs": 20,
    "save_total_limit": 2,
    "early_stopping_patience": 2,
    # Only an upper bound: a decision takes milliseconds; generous for a loaded CI machine.
    "decision_timeout_s": 60.0,
}


def composite_scores(log_history: list[dict]) -> dict[int, float]:
    """Score every evaluation of ``log_history`` with the default profile of DESIGN section 4."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    scores: dict[int, float] = {}
    previous_loss, without_improvement = None, 0
    for entry in (e for e in log_history if "eval_loss" in e):
        step, eval_loss = entry["step"], entry["eval_loss"]
        paired = [loss for at, loss in train if at <= step]
        train_loss = paired[-1] if paired else None
        improved = previous_loss is None or eval_loss < previous_loss
        without_improvement = 0 if improved else without_improvement + 1
        previous_loss = eval_loss
        scores[step] = score(eval_loss, train_loss, without_improvement)
    return scores


def score(eval_loss: float, train_loss: float | None, without_improvement: int) -> float:
    gap = 0.0 if train_loss is None else abs(train_loss - eval_loss) / max(eval_loss, 0.001)
    return (
        0.5 * eval_loss
        + 0.3 * gap
        + 0.1 * min(math.exp(eval_loss) / 20, 1)
        - (0.1 if without_improvement == 0 else 0)
    )


def lowest(values: dict[int, float]) -> int:
    """The step of the lowest value; ties go to the lower step."""
    return min(values, key=lambda step: (values[step], step))


def early_stop_step(scores: dict[int, float], patience: int) -> int:
    """Where EarlyStoppingCallback(patience) stops on these scores (lower is better)."""
    best, waited = math.inf, 0
    for step in sorted(scores):
        best, waited = (scores[step], 0) if scores[step] < best else (best, waited + 1)
        if waited >= patience:
            return step
    return max(scores)


def test_the_independent_formula_matches_the_design_table():
    assert score(0.5, 0.45, 0) == pytest.approx(0.188244, abs=1e-6)
    assert score(0.4, 0.1, 1) == pytest.approx(0.432459, abs=1e-6)
    assert score(0.5, None, 0) == pytest.approx(0.158244, abs=1e-6)
    history = [
        entry
        for step, (eval_loss, train_loss) in enumerate(
            zip([2.5, 1.2, 0.8, 0.75, 0.9], [2.8, 1.1, 0.75, 0.3, 0.1], strict=True), start=1
        )
        for entry in ({"step": step, "loss": train_loss}, {"step": step, "eval_loss": eval_loss})
    ]
    scores = composite_scores(history)
    expected = [1.246912, 0.541601, 0.329878, 0.465585, 0.728965]
    assert list(scores.values()) == pytest.approx(expected, abs=1e-6)
    assert lowest(scores) == 3
    assert early_stop_step(scores, 2) == 5 and early_stop_step(scores, 1) == 4


@pytest.fixture
def workers(pipeline_env, tmp_path):
    """The trusted side in its own process: pump, scoring and sink worker (REDIS_URL trusted)."""
    log = (tmp_path / "work.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt_pipeline.cli", "work"],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    log.close()


def wait_for_row(rows: SqliteWriter, job_id: str, timeout_s: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        row = rows.read_job(job_id)
        if row["status"] == "completed" and row["best_checkpoint_step"] is not None:
            return row
        if time.monotonic() > deadline:
            raise AssertionError(f"the row did not complete: {row}")
        time.sleep(0.2)


def same_weights(first: Path, second: Path) -> bool:
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.slow
def test_the_pod_follows_the_scorer_through_its_read_only_decision(
    tmp_path, redis_client, redis_server, pipeline_env, workers
):
    job_id = "loop-job"
    spec = validate_spec({**prepare_overfit_demo(tmp_path, job_id), **LOOP_SPEC})
    assert spec["follow_scorer"] and spec["metric_for_best_model"] == "checkpoint_score"
    script = tmp_path / "pod_script.py"
    script.write_text(render_script(spec))
    rows = SqliteWriter(pipeline_env.sink_url.removeprefix("sqlite:///"))
    rows.ensure_schema()
    rows.create_job(job_id, "loop-token")
    register_job(redis_client, job_id, "loop-token")
    credentials = create_pod_user(redis_client, job_id, redis_server.url)
    record_pod_user(redis_client, job_id, credentials.username)

    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "REDIS_URL", "JOB_ID")}
    # One thread: on two shared cores torch's default thread pool makes each step many times
    # slower, and the pod and the workers run side by side.
    env = {**clean, "REDIS_URL": credentials.redis_url, "JOB_ID": job_id, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert workers.poll() is None  # the scorer ran beside the pod the whole time

    output = Path(spec["output_dir"])
    best_dir = output / BEST_DIR
    state = json.loads((best_dir / "trainer_state.json").read_text())
    history = state["log_history"]
    evals = {e["step"]: e for e in history if "eval_loss" in e}
    scores = composite_scores(history)
    # Every evaluation got its decision in time, and it is the composite score.
    assert {step: e["eval_checkpoint_score"] for step, e in evals.items()} == pytest.approx(
        scores, abs=1e-9
    )
    best = lowest(scores)
    eval_loss_best = lowest({step: e["eval_loss"] for step, e in evals.items()})
    assert best != eval_loss_best, "the scenario: eval loss alone would pick another checkpoint"

    # Hugging Face followed the composite: its best, early stop and rotation.
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best}"
    assert state["best_metric"] == pytest.approx(scores[best], abs=1e-12)
    assert state["global_step"] == early_stop_step(scores, 2) < state["max_steps"]
    last = output / f"checkpoint-{state['global_step']}"
    folders = sorted(p.name for p in output.glob("checkpoint-*"))
    assert folders == sorted([f"checkpoint-{best}", last.name])  # the eval-loss best is gone
    last_state = json.loads((last / "trainer_state.json").read_text())
    assert last_state["best_model_checkpoint"] == state["best_model_checkpoint"]

    # <output_dir>/best is the composite best, ready to deploy with its tokenizer.
    assert same_weights(best_dir, output / f"checkpoint-{best}")
    assert not same_weights(best_dir, last)
    assert (best_dir / "tokenizer.json").is_file() and (best_dir / "config.json").is_file()
    assert f"best model (checkpoint-{best}) saved to {best_dir}" in done.stdout

    # The row names the same checkpoint.
    row = wait_for_row(rows, job_id)
    assert row["best_checkpoint_step"] == best
    assert Path(row["best_checkpoint_path"]).name == f"checkpoint-{best}"


def test_spec_defaults_turn_the_loop_on():
    spec = validate_spec(MINIMAL)
    assert spec["follow_scorer"] is True
    assert spec["decision_timeout_s"] == 10.0
    assert spec["metric_for_best_model"] == "checkpoint_score"
    assert spec["early_stopping_patience"] is None
    args = training_arguments(spec)
    assert args.load_best_model_at_end is True
    assert (args.metric_for_best_model, args.greater_is_better) == ("checkpoint_score", False)
    embedded_spec, _ = read_embedded(render_script(spec))
    assert embedded_spec["follow_scorer"] is True
    assert embedded_spec["metric_for_best_model"] == "checkpoint_score"


def test_without_the_loop_the_metric_defaults_to_eval_loss():
    spec = validate_spec({**MINIMAL, "follow_scorer": False})
    assert spec["metric_for_best_model"] == "eval_loss"
    assert training_arguments(spec).greater_is_better is False
    assert validate_spec(spec) == spec  # validating again changes nothing
    for composite in ("checkpoint_score", "eval_checkpoint_score"):
        with pytest.raises(SpecError, match="metric_for_best_model"):
            validate_spec({**MINIMAL, "follow_scorer": False, "metric_for_best_model": composite})


@pytest.mark.parametrize(
    ("metric", "greater_is_better"),
    [
        ("eval_checkpoint_score", False),
        ("eval_loss", False),
        ("loss", False),
        ("eval_accuracy", True),  # Hugging Face's rule: greater is better unless "...loss"
    ],
)
def test_metric_for_best_model_sets_greater_is_better(metric, greater_is_better):
    args = training_arguments(validate_spec({**MINIMAL, "metric_for_best_model": metric}))
    assert (args.metric_for_best_model, args.greater_is_better) == (metric, greater_is_better)
    assert args.load_best_model_at_end is True


@pytest.mark.parametrize("metric", ["", "eval loss", 3, "x" * 129])
def test_bad_metric_for_best_model_is_named(metric):
    with pytest.raises(SpecError, match="metric_for_best_model"):
        validate_spec({**MINIMAL, "metric_for_best_model": metric})


def test_a_null_metric_is_the_default_with_or_without_the_loop():
    assert validate_spec({**MINIMAL, "metric_for_best_model": None}) == validate_spec(MINIMAL)
    # Without the loop a null is "not set" too: the fallback, not a refused composite.
    unlooped = validate_spec({**MINIMAL, "follow_scorer": False, "metric_for_best_model": None})
    assert unlooped["metric_for_best_model"] == "eval_loss"


@pytest.mark.parametrize("patience", [0, -1, 1.5, True, "3"])
def test_bad_early_stopping_patience_is_named(patience):
    with pytest.raises(SpecError, match="early_stopping_patience"):
        validate_spec({**MINIMAL, "early_stopping_patience": patience})


@pytest.mark.parametrize(("field", "value"), [("follow_scorer", "yes"), ("follow_scorer", 1)])
def test_follow_scorer_must_be_a_bool(field, value):
    with pytest.raises(SpecError, match=field):
        validate_spec({**MINIMAL, field: value})


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "10"])
def test_bad_decision_timeout_is_named(timeout):
    with pytest.raises(SpecError, match="decision_timeout_s"):
        validate_spec({**MINIMAL, "decision_timeout_s": timeout})


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"save_strategy": "epoch"}, "save_strategy"),
        ({"eval_strategy": "epoch"}, "save_strategy"),
        ({"eval_steps": 10, "save_steps": 15}, "save_steps"),
        ({"eval_steps": 10, "save_steps": 5}, "save_steps"),
    ],
)
def test_load_best_model_at_end_needs_matching_strategies(overrides, field):
    with pytest.raises(SpecError, match=field):
        validate_spec({**MINIMAL, **overrides})
    # A checkpoint at every second evaluation is what Hugging Face accepts, and so does the spec.
    training_arguments(validate_spec({**MINIMAL, "eval_steps": 10, "save_steps": 20}))


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {
        **MINIMAL,
        "model": str(build_tiny_model(root / "model")),
        "dataset": str(
            write_jsonl_dataset(root / "data.jsonl", corpus_text()[:320], chunk_chars=32)
        ),
        "output_dir": str(root / "out"),
        "max_length": 32,
    }


def test_build_trainer_follows_the_composite_only_with_a_callback_that_provides_it(tiny_spec):
    follower = CheckpointEventsCallback("spec-job", "redis://127.0.0.1:9/0", follow_scorer=True)
    looped = build_trainer({**tiny_spec, "early_stopping_patience": 3}, [follower])
    assert looped.args.metric_for_best_model == "checkpoint_score"
    assert looped.args.greater_is_better is False
    (stopper,) = [
        c for c in looped.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)
    ]
    assert stopper.early_stopping_patience == 3
    # A callback that only publishes gives no composite: Hugging Face's own eval_loss, not a
    # KeyError at the first evaluation; and no early stopping unless the spec asks for it.
    publisher_only = CheckpointEventsCallback("spec-job", "redis://127.0.0.1:9/0")
    plain = build_trainer(tiny_spec, [publisher_only])
    assert (plain.args.metric_for_best_model, plain.args.greater_is_better) == ("eval_loss", False)
    assert not [c for c in plain.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
