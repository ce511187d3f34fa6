"""Tests of the training program (remote/training.py and its modules) and the demo's tiny model.

Everything is built locally: no test downloads a model or a data set.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ckpt_pipeline.demo.model import (
    build_tiny_model,
    corpus_text,
    prepare_overfit_demo,
    write_jsonl_dataset,
)
from remote.arguments import _default_arguments, _program_arguments, training_arguments
from remote.dataset import DatasetError, load_texts, split_texts
from remote.render import read_embedded
from remote.schema import PROGRAM_OWNED, REQUIRED, SPEC_DEFAULTS, SPEC_FIELDS, SpecError
from remote.spec import DEVICE_CHECKED, argument_types, validate_spec
from remote.training import run_training

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


# Part 5 of issue 12: the spec passes any TrainingArguments field through, a null is "not set",
# and whatever is refused is refused by name, on the trusted side.

PASSED_THROUGH = {
    "bf16": True,  # built with use_cpu where there is no CUDA, so a CPU machine accepts it
    "gradient_accumulation_steps": 2,
    "warmup_steps": 0.1,  # a ratio of the total steps (transformers 5 has no warmup_ratio)
    "lr_scheduler_type": "cosine",
    "weight_decay": 0.01,
    "gradient_checkpointing": True,
    "max_grad_norm": 0.5,
    "per_device_eval_batch_size": 3,  # a program default a spec may override
    "optim": "adamw_torch",
}


# transformers 5 renamed it activation_checkpointing; the old name still works, with a warning.
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning")
def test_trainingarguments_fields_pass_through():
    spec = validate_spec({**MINIMAL_SPEC, **PASSED_THROUGH})
    assert {field: spec[field] for field in PASSED_THROUGH} == PASSED_THROUGH
    assert validate_spec(spec) == spec  # the rendered script validates it again on the pod
    args = training_arguments(spec)
    for field, value in PASSED_THROUGH.items():
        given = getattr(args, field)
        assert getattr(given, "value", given) == value, field  # enums hold the string
    # The program's own rules stand beside them.
    assert args.load_best_model_at_end is True and args.report_to == []
    assert args.save_only_model is False and args.restore_callback_states_from_checkpoint
    assert (args.output_dir, args.seed, args.data_seed) == ("out", 42, 42)


def test_passed_through_fields_reach_the_trainer(
    tiny_model: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    output_dir = tmp_path / "out"
    spec = {
        **short_spec(tiny_model, tiny_dataset, output_dir),
        "gradient_accumulation_steps": 2,
        "lr_scheduler_type": "constant",
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = run_training(spec, callbacks=[])
    finally:
        torch.set_num_threads(threads)
    # 4 batches per epoch, 2 per optimizer step: 2 steps an epoch, 4 in all, one save at 4.
    assert trainer.state.global_step == 4
    assert [p.name for p in checkpoints(output_dir)] == ["checkpoint-4"]
    rates = [e["learning_rate"] for e in log_history(checkpoints(output_dir)[-1]) if "loss" in e]
    assert rates and set(rates) == {spec["learning_rate"]}  # constant: no linear decay


def test_the_program_sets_only_its_own_and_owned_fields():
    spec = validate_spec(MINIMAL_SPEC)
    accepted = set(argument_types())
    set_by_program = set(_program_arguments(spec, "eval_loss"))
    # Otherwise a spec could override, through passthrough, what the program must decide.
    assert set_by_program <= accepted & (set(SPEC_FIELDS) | set(PROGRAM_OWNED))
    assert set(PROGRAM_OWNED) <= accepted  # the table names real fields, none stale
    assert set(_default_arguments(spec)) <= accepted - set(SPEC_FIELDS) - set(PROGRAM_OWNED)
    assert set(DEVICE_CHECKED) <= accepted - set(PROGRAM_OWNED)


@pytest.mark.parametrize("field", sorted(PROGRAM_OWNED))
def test_a_field_the_program_owns_is_refused_by_name(field):
    reason = re.escape(PROGRAM_OWNED[field])
    with pytest.raises(SpecError, match=f"'{field}': {reason}"):
        validate_spec({**MINIMAL_SPEC, field: True})
    # A null asks nothing of it: "not set".
    assert validate_spec({**MINIMAL_SPEC, field: None}) == validate_spec(MINIMAL_SPEC)


OPTIONAL_FIELDS = [field for field, default in SPEC_DEFAULTS.items() if default is not REQUIRED]


@pytest.mark.parametrize("field", OPTIONAL_FIELDS)
def test_a_null_spec_field_is_not_set(field):
    assert validate_spec({**MINIMAL_SPEC, field: None}) == validate_spec(MINIMAL_SPEC)


def test_null_eval_steps_is_the_default():
    # The case: a spec generated with every field written out, unset ones as null.
    spec = validate_spec({**MINIMAL_SPEC, "eval_steps": None, "save_steps": None})
    assert (spec["eval_steps"], spec["save_steps"]) == (10, 10)
    assert training_arguments(spec).eval_steps == 10


def test_a_null_trainingarguments_field_is_left_to_hugging_face():
    nulls = {"bf16": None, "lr_scheduler_type": None, "warmup_steps": None, "tf32": None}
    spec = validate_spec({**MINIMAL_SPEC, **nulls})
    assert spec == validate_spec(MINIMAL_SPEC)  # bf16 is a bool, yet null is "not set"
    assert training_arguments(spec).lr_scheduler_type.value == "linear"  # Hugging Face's


@pytest.mark.parametrize("field", ["job_id", "model", "dataset", "output_dir"])
def test_a_null_required_field_is_named(field):
    with pytest.raises(SpecError, match=f"'{field}' is required"):
        validate_spec({**MINIMAL_SPEC, field: None})


def test_an_unknown_field_is_named_with_what_to_use_instead():
    with pytest.raises(SpecError, match=r"'warmup_ratio'.*use warmup_steps"):
        validate_spec({**MINIMAL_SPEC, "warmup_ratio": 0.1})
    with pytest.raises(SpecError, match=r"unknown spec field\(s\): 'learning_rat' \("):
        validate_spec({**MINIMAL_SPEC, "learning_rat": 1e-3})
    # Even as null: a misspelt name is a mistake to show, not a field to ignore.
    with pytest.raises(SpecError, match="'learning_rat'"):
        validate_spec({**MINIMAL_SPEC, "learning_rat": None})


@pytest.mark.parametrize(
    ("overrides", "field", "said"),
    [
        ({"lr_scheduler_type": "bogus"}, "lr_scheduler_type", "not a valid SchedulerType"),
        ({"optim": "bogus"}, "optim", "not a valid OptimizerNames"),
        # Two fields together: the one that tips it is named, and Hugging Face's words say why.
        ({"bf16": True, "fp16": True}, "fp16", "At most one of fp16 and bf16"),
        ({"fsdp": "bogus"}, "fsdp", "Unknown `fsdp` option"),
        ({"warmup_steps": -1}, "warmup_steps", "warmup_steps >= 0"),
        ({"dataloader_prefetch_factor": 2}, "dataloader_prefetch_factor", "num_workers > 0"),
    ],
)
def test_a_value_trainingarguments_refuses_is_named(overrides, field, said):
    with pytest.raises(SpecError) as refused:
        validate_spec({**MINIMAL_SPEC, **overrides})
    assert str(refused.value).startswith(f"spec field {field!r}: TrainingArguments refused")
    assert said in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("weight_decay", "0.01"),
        ("weight_decay", float("nan")),
        ("bf16", "true"),
        ("gradient_accumulation_steps", 2.0),
        ("gradient_accumulation_steps", 0),  # TrainingArguments takes it; training divides by it
        ("max_steps", True),
        ("lr_scheduler_kwargs", [1]),
        ("parallelism_config", {}),  # a Python object: JSON cannot give one
        ("tf32", "yes"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(field, value):
    with pytest.raises(SpecError, match=f"^spec field '{field}': expected"):
        validate_spec({**MINIMAL_SPEC, field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the trusted side without a GPU")
def test_a_field_only_a_gpu_can_check_is_checked_by_the_pod():
    spec = validate_spec({**MINIMAL_SPEC, "tf32": True})  # a CPU cannot tell: the pod checks
    assert spec["tf32"] is True
    # What the pod builds, here on a CPU as on a pod without an Ampere GPU: refused by name.
    with pytest.raises(SpecError, match="spec field 'tf32': TrainingArguments refused True"):
        training_arguments(spec)


def render(spec_file: Path, *output: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ckpt_pipeline.cli", "remote", "render", str(spec_file)]
    return subprocess.run([*command, *output], capture_output=True, text=True, cwd=cwd)


def test_remote_render_passes_fields_through_and_names_a_refused_one(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(
        json.dumps({**MINIMAL_SPEC, "eval_steps": None, "bf16": True, "weight_decay": 0.1})
    )
    done = render(spec_file, "-o", "pod.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    embedded, _ = read_embedded((tmp_path / "pod.py").read_text())
    assert (embedded["eval_steps"], embedded["bf16"], embedded["weight_decay"]) == (10, True, 0.1)
    spec_file.write_text(json.dumps({**MINIMAL_SPEC, "lr_scheduler_type": "bogus"}))
    refused = render(spec_file, "-o", "bad.py", cwd=tmp_path)
    assert refused.returncode == 2 and "'lr_scheduler_type'" in refused.stderr
    assert not (tmp_path / "bad.py").exists()


def test_remote_render_to_standard_output(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(MINIMAL_SPEC))
    done = render(spec_file, "-o", "-", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "-").exists()
    embedded, sources = read_embedded(done.stdout)  # stdout is the script and nothing else
    assert embedded == validate_spec(MINIMAL_SPEC) and "remote/pod_main.py" in sources
