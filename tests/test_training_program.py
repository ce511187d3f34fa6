"""Tests of the training program (remote/training.py) and the tiny local model (remote/tiny.py).

Everything is built locally: no test downloads a model or a data set.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from remote.tiny import build_tiny_model, corpus_text, prepare_overfit_demo, write_jsonl_dataset
from remote.training import (
    SPEC_FIELDS,
    DatasetError,
    SpecError,
    load_texts,
    run_training,
    split_texts,
    validate_spec,
)

MINIMAL_SPEC = {"job_id": "job-1", "model": "m", "dataset": "d.jsonl", "output_dir": "out"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 20 chunks of 32 characters: 16 train and 4 eval examples keep runs to a second or so.
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    return write_jsonl_dataset(path, corpus_text()[:640], chunk_chars=32)


def short_spec(model: Path, dataset: Path, output_dir: Path) -> dict:
    return {
        "job_id": "test-job",
        "model": str(model),
        "dataset": str(dataset),
        "output_dir": str(output_dir),
        "max_length": 32,
        "num_train_epochs": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 3e-3,
        "eval_steps": 4,
        "save_steps": 4,
        "logging_steps": 2,
    }


def log_history(checkpoint: Path) -> list[dict]:
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


def checkpoints(output_dir: Path) -> list[Path]:
    return sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))


def test_validate_spec_fills_defaults() -> None:
    spec = validate_spec(MINIMAL_SPEC)
    assert set(spec) == set(SPEC_FIELDS)
    assert spec["eval_fraction"] == 0.2
    assert spec["max_length"] == 64
    assert spec["eval_strategy"] == "steps"
    assert spec["save_total_limit"] is None


def test_validate_spec_names_missing_job_id() -> None:
    spec = {k: v for k, v in MINIMAL_SPEC.items() if k != "job_id"}
    with pytest.raises(SpecError, match="job_id"):
        validate_spec(spec)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.2", float("nan"), True])
def test_validate_spec_names_bad_eval_fraction(fraction: object) -> None:
    with pytest.raises(SpecError, match="eval_fraction"):
        validate_spec({**MINIMAL_SPEC, "eval_fraction": fraction})


def test_validate_spec_names_unknown_field() -> None:
    with pytest.raises(SpecError, match="warmup_ratio"):
        validate_spec({**MINIMAL_SPEC, "warmup_ratio": 0.1})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("job_id", "bad id!"),
        ("eval_strategy", "no"),
        ("max_length", 0),
        ("per_device_train_batch_size", 2.5),
        ("save_total_limit", 0),
    ],
)
def test_validate_spec_names_bad_value(field: str, value: object) -> None:
    with pytest.raises(SpecError, match=field):
        validate_spec({**MINIMAL_SPEC, field: value})


def test_tiny_model_round_trips_offline(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    sample = "Checkpoints cost disk space,\nso most setups keep only the last few."
    ids = tokenizer(sample)["input_ids"]
    assert len(ids) == len(sample)
    assert tokenizer.decode(ids) == sample
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == (
        "<pad>",
        "<eos>",
        "<unk>",
    )
    assert model.config.vocab_size == len(tokenizer)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tokenizer))


def test_tiny_model_is_seeded(tmp_path: Path) -> None:
    first = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "a", "abc"))
    second = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "b", "abc"))
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_load_texts_names_line_without_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n\n{"prompt": "no text"}\n')
    with pytest.raises(DatasetError, match="line 3"):
        load_texts(str(path))


def test_load_texts_reads_written_dataset(tiny_dataset: Path) -> None:
    texts = load_texts(str(tiny_dataset))
    assert "".join(texts) == corpus_text()[:640]


def test_split_is_deterministic_and_keeps_an_eval_example() -> None:
    texts = [f"text {i}" for i in range(10)]
    train, held_out = split_texts(texts, 0.01, seed=1)
    assert len(held_out) == 1
    assert sorted(train + held_out) == sorted(texts)
    assert split_texts(texts, 0.3, seed=7) == split_texts(texts, 0.3, seed=7)


def test_run_training_writes_checkpoints_with_losses(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "out"
    run_training(short_spec(tiny_model, tiny_dataset, output_dir), callbacks=[])
    saved = checkpoints(output_dir)
    # 16 train examples / batch 4 = 4 steps per epoch, 8 steps: saves at 4 and 8.
    assert [p.name for p in saved] == ["checkpoint-4", "checkpoint-8"]
    history = log_history(saved[-1])
    assert any("loss" in entry for entry in history)
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [4, 8]


def test_run_training_is_deterministic(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    losses = []
    for name in ("first", "second"):
        output_dir = tmp_path / name
        run_training(short_spec(tiny_model, tiny_dataset, output_dir), callbacks=[])
        history = log_history(checkpoints(output_dir)[-1])
        losses.append([(e["step"], e.get("loss"), e.get("eval_loss")) for e in history])
    assert losses[0] == losses[1]


def test_overfit_demo_overfits(tmp_path: Path) -> None:
    spec = prepare_overfit_demo(tmp_path)
    run_training(spec, callbacks=[])
    history = log_history(checkpoints(Path(spec["output_dir"]))[-1])
    train = [entry["loss"] for entry in history if "loss" in entry]
    evals = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    best = evals.index(min(evals))
    # The minimum sits well inside the run and the eval loss then climbs clearly above it.
    assert 0 < best < len(evals) // 2
    assert evals[-1] > min(evals) + 0.3
    assert train[-1] < train[0] - 1.0
