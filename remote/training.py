"""The training program: fine-tune a causal LM on a JSONL text data set, driven by a spec dict.

Used in-process by the demo and the tests, and embedded verbatim in the generated pod script, so
it depends only on the standard library, torch and transformers. It publishes nothing itself:
the caller passes callbacks (on a pod, `producer.CheckpointEventsCallback`). For the same reason
it has no `from __future__` import, which would be a syntax error anywhere but the top of a file.

The Trainer picks its best checkpoint (the one rotation keeps, `load_best_model_at_end` loads
and early stopping watches) by `metric_for_best_model`, by default the scorer's composite
`checkpoint_score`: a callback that follows the scorer writes it into each evaluation's metrics
as `eval_checkpoint_score`. `run_training` saves the loaded best model to `<output_dir>/best`.

Besides its own fields (`SPEC_FIELDS`), a spec may set any other field that `TrainingArguments`
accepts (`bf16`, `gradient_accumulation_steps`, `lr_scheduler_type`, ...): it goes straight to
`TrainingArguments`, except the fields the program owns (`PROGRAM_OWNED`). `validate_spec`
checks them by building `TrainingArguments`, so the trusted side refuses a bad spec, naming the
field, before a pod is paid for. A JSON null in any optional field means "not set".

Checkpoints hold the optimizer, scheduler and RNG states, so that `run_training` can resume
from one (`resume_from_checkpoint`) and end as an uninterrupted run would.
"""

import dataclasses
import enum
import functools
import json
import logging
import math
import random
import re
import types
import typing
import urllib.request
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from transformers import __version__ as TRANSFORMERS_VERSION

REQUIRED = object()
"""Marker default of a field that the spec must set."""

COMPOSITE_METRIC = "checkpoint_score"
"""The scorer's composite score as a Trainer metric; evaluations carry it as `eval_<name>`."""

FALLBACK_METRIC = "eval_loss"
"""What the Trainer picks by when the composite is not available: Hugging Face's own default."""

BEST_DIR = "best"
"""Sub-folder of `output_dir` where `run_training` saves the best model for deployment."""

logger = logging.getLogger(__name__)

SPEC_FIELDS: dict[str, str] = {
    "job_id": "Job id, 1 to 64 of [A-Za-z0-9_-]. Required.",
    "model": "Hub model name or local model folder, loaded with from_pretrained. Required.",
    "dataset": "Path or http(s) URL of a JSONL file whose lines hold a 'text' string. Required.",
    "eval_fraction": "Share of the texts held out for evaluation, in (0, 1). Default 0.2.",
    "output_dir": (
        "Folder for checkpoint-* folders. At the end the best model (weights, config, tokenizer"
        " and trainer_state.json naming its checkpoint) is saved to <output_dir>/best: the"
        " platform deploys from there. Required."
    ),
    "max_length": "Tokens per example; texts are truncated or padded to it. Default 64.",
    "seed": "Seed of the split, dropout and the data order, in [0, 2**32). Default 42.",
    "num_train_epochs": "Passes over the training texts (TrainingArguments). Default 3.",
    "per_device_train_batch_size": "Training batch size (TrainingArguments). Default 8.",
    "learning_rate": "Peak learning rate (TrainingArguments). Default 5e-4.",
    "eval_strategy": "'steps' or 'epoch' (TrainingArguments). Default 'steps'.",
    "eval_steps": "Steps between evaluations when eval_strategy is 'steps'. Default 10.",
    "save_strategy": (
        "'steps' or 'epoch' (TrainingArguments); must equal eval_strategy, as"
        " load_best_model_at_end requires. Default 'steps'."
    ),
    "save_steps": (
        "Steps between checkpoints when save_strategy is 'steps'; a multiple of eval_steps."
        " Default 10."
    ),
    "save_total_limit": "Checkpoints kept after rotation, or None to keep all. Default None.",
    "logging_steps": "Steps between train_log entries (TrainingArguments). Default 5.",
    "follow_scorer": (
        "Close the loop: at each evaluation the pod's callback waits (at most decision_timeout_s)"
        " for the scorer's decision and gives the Trainer the composite score as"
        " eval_checkpoint_score. Default true."
    ),
    "decision_timeout_s": (
        "Longest wait for one evaluation's decision, in seconds; a late decision counts as"
        " +inf for the Trainer (the row still picks correctly). Default 10.0."
    ),
    "metric_for_best_model": (
        "Metric that picks the checkpoint rotation keeps, load_best_model_at_end loads and"
        " early stopping watches (TrainingArguments). Default 'checkpoint_score', the composite"
        " (lower is better), which needs follow_scorer; 'eval_loss' when follow_scorer is false."
        " For other metrics greater_is_better follows Hugging Face: false iff the name ends in"
        " 'loss'."
    ),
    "early_stopping_patience": (
        "Stop after this many evaluations in a row without improvement of"
        " metric_for_best_model (EarlyStoppingCallback), or None not to stop early."
        " Default None."
    ),
}
"""What each of the program's own spec fields means. `validate_spec` also accepts any other
field `TrainingArguments` takes, except those in `PROGRAM_OWNED`."""

SPEC_DEFAULTS: dict[str, Any] = {
    "job_id": REQUIRED,
    "model": REQUIRED,
    "dataset": REQUIRED,
    "eval_fraction": 0.2,
    "output_dir": REQUIRED,
    "max_length": 64,
    "seed": 42,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 8,
    "learning_rate": 5e-4,
    "eval_strategy": "steps",
    "eval_steps": 10,
    "save_strategy": "steps",
    "save_steps": 10,
    "save_total_limit": None,
    "logging_steps": 5,
    "follow_scorer": True,
    "decision_timeout_s": 10.0,
    "metric_for_best_model": COMPOSITE_METRIC,
    "early_stopping_patience": None,
}

PROGRAM_OWNED: dict[str, str] = {
    "load_best_model_at_end": (
        "always true: rotation keeps, and the end loads, the best checkpoint by"
        " metric_for_best_model"
    ),
    "greater_is_better": "follows metric_for_best_model (false for the composite score)",
    "report_to": "the pod reports to the pipeline only; an integration would need credentials",
    "save_only_model": (
        "always false: a restarted pod resumes from its newest checkpoint, which needs the"
        " optimizer, scheduler and RNG states"
    ),
    "restore_callback_states_from_checkpoint": (
        "always true: a resumed run keeps early stopping's count of evaluations without improvement"
    ),
    "ignore_data_skip": (
        "always false: a resumed run skips the batches it trained on, so it ends as an"
        " uninterrupted run would"
    ),
    "resume_from_checkpoint": "the pod script resumes from the newest complete checkpoint",
    "data_seed": "set from the spec's seed",
    "use_cpu": "the program trains on CUDA when present, else on the CPU",
    "logging_strategy": (
        "'steps', every logging_steps: the train logs give the score its train loss"
    ),
    "eval_on_start": (
        "an evaluation before training has no checkpoint, and a resumed run would evaluate"
        " its resume step a second time"
    ),
    "hub_token": "a secret must not travel in the spec, which the pod script embeds in clear",
}
"""`TrainingArguments` fields the program sets itself, and why; a spec that sets one is refused."""

DEVICE_CHECKED = ("tf32",)
"""Fields `TrainingArguments` checks against the GPU it finds. Where no CUDA device is present
(a trusted machine validating a pod's spec) only their type is checked; the pod checks the
rest when it validates the spec again."""

UNKNOWN_FIELD_HINTS = {
    "warmup_ratio": "use warmup_steps: a value in [0, 1) is a share of the total steps",
}
"""What to use instead of a field that older transformers versions accepted."""

POSITIVE_ARGUMENTS = ("gradient_accumulation_steps", "per_device_eval_batch_size")
"""Passed-through integers that must be positive; `TrainingArguments` accepts 0 and training
then divides by it."""

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
METRIC_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,128}")
STRATEGIES = ("steps", "epoch")
URL_TIMEOUT_S = 60.0


class SpecError(ValueError):
    """A training spec is invalid; the message names the offending field."""


class DatasetError(ValueError):
    """The data set cannot be read or has a malformed line."""


def _fail(field: str, expected: str, value: Any) -> SpecError:
    return SpecError(f"spec field {field!r}: expected {expected}, got {value!r}")


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but `True` epochs or steps is always a mistake.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_job_id(field: str, value: Any) -> str:
    if not isinstance(value, str) or not JOB_ID_PATTERN.fullmatch(value):
        raise _fail(field, "1 to 64 of [A-Za-z0-9_-]", value)
    return value


def _check_text(field: str, value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _fail(field, "a non-empty string", value)
    return value


def _check_seed(field: str, value: Any) -> int:
    # numpy, which set_seed also seeds, only accepts seeds in [0, 2**32).
    if not _is_int(value) or not 0 <= value < 2**32:
        raise _fail(field, "an integer in [0, 2**32)", value)
    return value


def _check_positive_int(field: str, value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise _fail(field, "a positive integer", value)
    return value


def _check_optional_positive_int(field: str, value: Any) -> int | None:
    return None if value is None else _check_positive_int(field, value)


def _check_positive_number(field: str, value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise _fail(field, "a positive number", value)
    return value


def _check_fraction(field: str, value: Any) -> float:
    if not _is_number(value) or not 0 < value < 1:
        raise _fail(field, "a number strictly between 0 and 1", value)
    return float(value)


def _check_strategy(field: str, value: Any) -> str:
    if value not in STRATEGIES:
        raise _fail(field, f"one of {STRATEGIES}", value)
    return value


def _check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, "true or false", value)
    return value


def _check_metric(field: str, value: Any) -> str:
    if not isinstance(value, str) or not METRIC_PATTERN.fullmatch(value):
        raise _fail(field, "a metric name such as 'checkpoint_score' or 'eval_loss'", value)
    return value


def is_composite_metric(metric: str | None) -> bool:
    """Return True when `metric` names the composite score (with or without `eval_`)."""
    return metric is not None and metric.removeprefix("eval_") == COMPOSITE_METRIC


def follows_scorer(callback: Any) -> bool:
    """Return True when a Trainer callback puts `eval_checkpoint_score` into the metrics.

    `producer.CheckpointEventsCallback(follow_scorer=True)` does. This module must not import
    `producer`, so it asks the attribute rather than the type.
    """
    return getattr(callback, "follow_scorer", False) is True


_CHECKS = {
    "job_id": _check_job_id,
    "model": _check_text,
    "dataset": _check_text,
    "eval_fraction": _check_fraction,
    "output_dir": _check_text,
    "max_length": _check_positive_int,
    "seed": _check_seed,
    "num_train_epochs": _check_positive_number,
    "per_device_train_batch_size": _check_positive_int,
    "learning_rate": _check_positive_number,
    "eval_strategy": _check_strategy,
    "eval_steps": _check_positive_int,
    "save_strategy": _check_strategy,
    "save_steps": _check_positive_int,
    "save_total_limit": _check_optional_positive_int,
    "logging_steps": _check_positive_int,
    "follow_scorer": _check_bool,
    "decision_timeout_s": _check_positive_number,
    "metric_for_best_model": _check_metric,
    "early_stopping_patience": _check_optional_positive_int,
}


def _check_together(spec: dict, given: dict) -> None:
    # load_best_model_at_end (always on) needs every evaluation to have a checkpoint; Hugging
    # Face would refuse the arguments later with a message that names no spec field.
    if spec["save_strategy"] != spec["eval_strategy"]:
        raise SpecError(
            f"spec field 'save_strategy': expected the eval_strategy {spec['eval_strategy']!r}"
            f" (load_best_model_at_end needs a checkpoint at every evaluation), got"
            f" {spec['save_strategy']!r}"
        )
    if spec["save_strategy"] == "steps" and spec["save_steps"] % spec["eval_steps"]:
        raise SpecError(
            f"spec field 'save_steps': expected a multiple of eval_steps {spec['eval_steps']}"
            f" (load_best_model_at_end), got {spec['save_steps']!r}"
        )
    if not spec["follow_scorer"] and is_composite_metric(spec["metric_for_best_model"]):
        if given.get("metric_for_best_model") is not None:
            raise SpecError(
                "spec field 'metric_for_best_model': the composite 'checkpoint_score' needs"
                " follow_scorer true; set follow_scorer or another metric such as 'eval_loss'"
            )
        # Without the loop there is no composite in the metrics: Hugging Face's own default.
        spec["metric_for_best_model"] = FALLBACK_METRIC


@functools.cache
def argument_types() -> dict[str, Any]:
    """Return the type annotation of every field `TrainingArguments` takes as an argument."""
    hints = typing.get_type_hints(TrainingArguments)
    return {
        field.name: hints.get(field.name, Any)
        for field in dataclasses.fields(TrainingArguments)
        if field.init
    }


def passthrough_fields(spec: dict) -> dict[str, Any]:
    """Return the fields of a validated spec that go straight to `TrainingArguments`."""
    return {field: value for field, value in spec.items() if field not in SPEC_FIELDS}


def _fits(value: Any, annotation: Any) -> bool:
    """Return True when a JSON value is of the `TrainingArguments` type `annotation`.

    `TrainingArguments` checks few types itself (a string weight decay fails at the first
    optimizer step, on the pod), so the annotation is checked here.
    """
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, member) for member in members)
    if origin is typing.Literal:
        return any(type(value) is type(option) and value == option for option in members)
    if origin in (list, tuple):
        return isinstance(value, list) and all(_fits(v, members[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(v, members[-1]) for v in value.values())
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return _is_int(value)
    if annotation is float:
        return _is_number(value)
    if annotation in (str, dict, list):
        return isinstance(value, annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return any(value == member.value for member in annotation)
    return False  # a Python object such as ParallelismConfig: JSON cannot hold one


def _describe(annotation: Any) -> str:
    """Say in words what values of the type `annotation` look like in JSON."""
    origin, members = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(member) for member in members))
    if origin is typing.Literal:
        return f"one of {', '.join(map(repr, members))}"
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "an object"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "a string"
    words = {
        type(None): "null", bool: "true or false", int: "an integer", float: "a number",
        str: "a string", dict: "an object", list: "a list",
    }  # fmt: skip
    return words.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _check_passthrough(field: str, value: Any) -> Any:
    annotation = argument_types()[field]
    if not _fits(value, annotation):
        raise _fail(field, f"{_describe(annotation)} (TrainingArguments.{field})", value)
    if field in POSITIVE_ARGUMENTS:
        _check_positive_int(field, value)
    return value


def _check_names(spec: dict) -> None:
    # A null is "not set" here too: it asks nothing of what the program owns.
    owned = [field for field, value in spec.items() if field in PROGRAM_OWNED and value is not None]
    if owned:
        reasons = "; ".join(f"{field!r}: {PROGRAM_OWNED[field]}" for field in owned)
        raise SpecError(f"spec field(s) set by the program itself, not by the spec: {reasons}")
    accepted = argument_types()
    unknown = sorted(set(spec) - set(SPEC_FIELDS) - set(accepted), key=str)
    if unknown:
        hints = "".join(
            f"; {field!r}: {UNKNOWN_FIELD_HINTS[field]}"
            for field in unknown
            if field in UNKNOWN_FIELD_HINTS
        )
        raise SpecError(
            f"unknown spec field(s): {', '.join(map(repr, unknown))} (neither a spec field nor"
            f" a TrainingArguments field of transformers {TRANSFORMERS_VERSION}){hints}"
        )


def validate_spec(spec: dict) -> dict:
    """Check a training spec and fill in defaults.

    The program's own fields (`SPEC_FIELDS`) are checked by their rules. Any other field that
    `TrainingArguments` accepts, except those in `PROGRAM_OWNED`, is checked against its type
    annotation and then by building `TrainingArguments` from the whole spec, as the pod will
    (on the CPU when no CUDA device is present; see `DEVICE_CHECKED`). A None (JSON null) in
    an optional field means "not set": the default.

    Args:
        spec: Field name to value. Path values are accepted for path fields.

    Returns:
        A new dict holding every field of `SPEC_FIELDS`, defaults filled in, followed by the
        `TrainingArguments` fields the spec sets (those set to None left out). Validating it
        again returns an equal dict.

    Raises:
        SpecError: If `spec` is not a dict, has a field that is neither a spec field nor a
            `TrainingArguments` field, sets a field of `PROGRAM_OWNED`, misses a required
            field, holds a bad value, or its fields disagree (save_strategy and eval_strategy
            differ, save_steps is not a multiple of eval_steps, the composite metric without
            follow_scorer, anything `TrainingArguments` refuses). The message names the field.
    """
    if not isinstance(spec, dict):
        raise SpecError(f"spec must be a dict, got {type(spec).__name__}")
    _check_names(spec)
    normalised = {}
    for field, default in SPEC_DEFAULTS.items():
        value = spec.get(field)
        if value is None:  # absent or JSON null: not set
            if default is REQUIRED:
                raise SpecError(f"spec field {field!r} is required: {SPEC_FIELDS[field]}")
            value = default
        normalised[field] = _CHECKS[field](field, value)
    _check_together(normalised, spec)
    for field, value in spec.items():
        if field not in SPEC_FIELDS and value is not None:
            normalised[field] = _check_passthrough(field, value)
    # Only a GPU can tell whether it supports these: the pod checks them when it validates.
    unchecked = () if torch.cuda.is_available() else DEVICE_CHECKED
    _build_arguments(normalised, normalised["metric_for_best_model"], skip=unchecked)
    return normalised


def _read_dataset_lines(dataset: str) -> list[str]:
    if dataset.startswith(("http://", "https://")):
        with urllib.request.urlopen(dataset, timeout=URL_TIMEOUT_S) as response:
            return response.read().decode("utf-8").splitlines()
    try:
        return Path(dataset).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(f"cannot read data set {dataset!r}: {exc}") from exc


def _line_text(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from exc
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DatasetError(f"{where}: no 'text' string in this line")
    return text


def load_texts(dataset: str) -> list[str]:
    """Read the `text` of every line of a JSONL data set.

    Args:
        dataset: Local path, or http(s) URL fetched with urllib.

    Returns:
        The texts in file order; blank lines are skipped.

    Raises:
        DatasetError: If the file cannot be read, a line is not a JSON object with a `text`
            string, or there are no texts at all.
        urllib.error.URLError: If a URL cannot be fetched.
    """
    texts = [
        _line_text(line, f"{dataset} line {number}")
        for number, line in enumerate(_read_dataset_lines(dataset), start=1)
        if line.strip()
    ]
    if not texts:
        raise DatasetError(f"data set {dataset!r} holds no texts")
    return texts


def split_texts(texts: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split texts into train and eval sets, the same way for the same seed.

    Args:
        texts: All texts; at least two.
        eval_fraction: Share held out for evaluation, in (0, 1).
        seed: Seed of the shuffle.

    Returns:
        `(train_texts, eval_texts)`, each non-empty.

    Raises:
        DatasetError: If there are fewer than two texts.
    """
    if len(texts) < 2:
        raise DatasetError(
            f"need at least 2 texts to hold one out for evaluation, got {len(texts)}"
        )
    order = list(range(len(texts)))
    # A private Random keeps the split independent of whatever else consumed the global RNG.
    random.Random(seed).shuffle(order)
    n_eval = min(len(texts) - 1, max(1, round(len(texts) * eval_fraction)))
    eval_texts = [texts[i] for i in sorted(order[:n_eval])]
    train_texts = [texts[i] for i in sorted(order[n_eval:])]
    return train_texts, eval_texts


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length causal LM examples: input_ids, attention_mask and labels tensors."""

    def __init__(self, encodings: dict[str, torch.Tensor]) -> None:
        self.encodings = encodings

    def __len__(self) -> int:
        return len(self.encodings["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: values[index] for name, values in self.encodings.items()}


def tokenize_blocks(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> BlockDataset:
    """Tokenise texts into blocks of exactly `max_length` tokens with causal LM labels.

    Args:
        texts: Texts, one example each.
        tokenizer: Tokenizer with a pad token.
        max_length: Block length; longer texts are truncated, shorter ones padded.

    Returns:
        A data set whose labels equal input_ids except -100 at padding, so padding adds no loss.
    """
    encodings = tokenizer(
        texts,
        max_length=max_length,
        truncation=True,
        padding="max_length",
        return_tensors="pt",
    )
    labels = encodings["input_ids"].clone()
    # Mask by attention rather than pad id: for hub models the pad token is often the eos token.
    labels[encodings["attention_mask"] == 0] = -100
    return BlockDataset(
        {
            "input_ids": encodings["input_ids"],
            "attention_mask": encodings["attention_mask"],
            "labels": labels,
        }
    )


def load_tokenizer(model: str) -> PreTrainedTokenizerBase:
    """Load the model's tokenizer, giving it a pad token if it has none.

    Args:
        model: Hub name or local folder.

    Returns:
        The tokenizer; padding uses the eos token when the model defines no pad token.
    """
    tokenizer = AutoTokenizer.from_pretrained(model)
    if tokenizer.pad_token is None:
        # GPT-2-style hub models ship without a pad token; labels mask padding anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def training_arguments(
    spec: dict, *, metric_for_best_model: str | None = None
) -> TrainingArguments:
    """Build TrainingArguments from a validated spec.

    Args:
        spec: Output of `validate_spec`.
        metric_for_best_model: Overrides the spec's metric (`build_trainer` passes
            `FALLBACK_METRIC` when no callback provides the composite).

    Returns:
        Arguments that log, evaluate and save as the spec says, keep and load the best
        checkpoint by the metric (`load_best_model_at_end`), save checkpoints a run can resume
        from (optimizer, scheduler and RNG states, callback states), report to no integration
        and run on CPU when no CUDA device is present; with the spec's other
        `TrainingArguments` fields (see `passthrough_fields`) passed as they are.

    Raises:
        SpecError: If `TrainingArguments` refuses them; the message names the field.
    """
    return _build_arguments(spec, metric_for_best_model or spec["metric_for_best_model"])


def _program_arguments(spec: dict, metric: str) -> dict[str, Any]:
    """The arguments the program sets: every key is in `SPEC_FIELDS` or `PROGRAM_OWNED`."""
    return {
        "output_dir": spec["output_dir"],
        "num_train_epochs": spec["num_train_epochs"],
        "per_device_train_batch_size": spec["per_device_train_batch_size"],
        "learning_rate": spec["learning_rate"],
        "eval_strategy": spec["eval_strategy"],
        "eval_steps": spec["eval_steps"],
        "save_strategy": spec["save_strategy"],
        "save_steps": spec["save_steps"],
        "save_total_limit": spec["save_total_limit"],
        # Rotation keeps, and the end loads, the best checkpoint by this metric.
        "load_best_model_at_end": True,
        "metric_for_best_model": metric,
        # The composite is lower-is-better; for any other metric None lets Hugging Face apply
        # its own rule (greater is better unless the name ends in "loss").
        "greater_is_better": False if is_composite_metric(metric) else None,
        "logging_strategy": "steps",
        "logging_steps": spec["logging_steps"],
        "seed": spec["seed"],
        "data_seed": spec["seed"],
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        # A resumed run continues exactly where the checkpoint left off: the optimizer's
        # moments, the learning-rate schedule, the RNG states (dropout), early stopping's
        # count, and the data order past the batches already trained on. Without them it
        # would restart the schedule and end with another row than an uninterrupted run.
        "save_only_model": False,
        "restore_callback_states_from_checkpoint": True,
        "ignore_data_skip": False,
    }


def _default_arguments(spec: dict) -> dict[str, Any]:
    """The program's defaults that a spec may override (pod logs stay readable without tqdm)."""
    return {
        "per_device_eval_batch_size": spec["per_device_train_batch_size"],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


def _build_arguments(spec: dict, metric: str, skip: tuple[str, ...] = ()) -> TrainingArguments:
    """Build `TrainingArguments`; on refusal, find the spec field that makes it refuse."""
    base = {**_default_arguments(spec), **_program_arguments(spec, metric)}
    given = {k: v for k, v in passthrough_fields(spec).items() if k not in skip}
    try:
        return TrainingArguments(**{**base, **given})
    except Exception as exc:  # ValueError mostly, but also e.g. ImportError (deepspeed)
        raise _refusal(base, given, exc) from exc


def _refusal(base: dict, given: dict, exc: Exception) -> SpecError:
    """Name the field `TrainingArguments` refuses: the first whose addition makes it fail.

    `TrainingArguments` names arguments only in prose (``--tf32 requires ...``), and a
    refusal may come from two fields together (bf16 with fp16): adding the given fields one
    by one names the one that tipped it, and the message says what Hugging Face said.
    """
    try:
        TrainingArguments(**base)
    except Exception as own_exc:
        # The program's own arguments alone are refused (the spec-field checks should prevent
        # it): name the spec fields Hugging Face's message names.
        said = _said(own_exc)
        named = [f for f in SPEC_FIELDS if re.search(rf"\b{re.escape(f)}\b", said)]
        where = f"spec field(s) {', '.join(map(repr, named))}" if named else "spec"
        return SpecError(f"{where}: TrainingArguments refused the arguments: {said}")
    applied: dict[str, Any] = {}
    for field, value in given.items():
        applied[field] = value
        try:
            TrainingArguments(**{**base, **applied})
        except Exception as step_exc:
            return SpecError(
                f"spec field {field!r}: TrainingArguments refused {value!r}: {_said(step_exc)}"
            )
    # Refused once, accepted field by field: say what Hugging Face said the first time.
    return SpecError(f"spec: TrainingArguments refused the arguments: {_said(exc)}")


def _said(exc: Exception) -> str:
    return str(exc).strip() or type(exc).__name__


def build_trainer(spec: dict, callbacks: list[TrainerCallback]) -> Trainer:
    """Build a Trainer for a spec: load model and data, split, tokenise.

    The Trainer picks its best checkpoint by the spec's `metric_for_best_model`. The composite
    exists only when one of `callbacks` follows the scorer (see `follows_scorer`); without
    one, the Trainer falls back to `eval_loss` with a warning, as Hugging Face alone would.
    With `early_stopping_patience` set, an `EarlyStoppingCallback` is added after `callbacks`.

    Args:
        spec: A training spec; validated here.
        callbacks: Trainer callbacks, e.g. `CheckpointEventsCallback`; may be empty.

    Returns:
        A ready Trainer; call `train()` on it.

    Raises:
        SpecError: If the spec is invalid.
        DatasetError: If the data set is unreadable, malformed or has fewer than two texts.
    """
    spec = validate_spec(spec)
    callbacks = list(callbacks)
    metric = spec["metric_for_best_model"]
    if is_composite_metric(metric) and not any(map(follows_scorer, callbacks)):
        # Hugging Face raises KeyError at the first evaluation when the metric is missing.
        logger.warning(
            "no callback follows the scorer, so there is no %r: the Trainer picks by %r",
            COMPOSITE_METRIC,
            FALLBACK_METRIC,
        )
        metric = FALLBACK_METRIC
    if spec["early_stopping_patience"] is not None:
        callbacks.append(
            EarlyStoppingCallback(early_stopping_patience=spec["early_stopping_patience"])
        )
    tokenizer = load_tokenizer(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    train_texts, eval_texts = split_texts(
        load_texts(spec["dataset"]), spec["eval_fraction"], spec["seed"]
    )
    return Trainer(
        model=model,
        args=training_arguments(spec, metric_for_best_model=metric),
        data_collator=default_data_collator,
        train_dataset=tokenize_blocks(train_texts, tokenizer, spec["max_length"]),
        eval_dataset=tokenize_blocks(eval_texts, tokenizer, spec["max_length"]),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def save_best_model(trainer: Trainer) -> Path:
    """Save the Trainer's current model to `<output_dir>/best`, where the platform deploys from.

    Call it after `train()`: with `load_best_model_at_end` the current model is the best
    checkpoint's. Every rank must call it (sharded models gather their weights); rank zero
    writes.

    Args:
        trainer: A trained Trainer.

    Returns:
        The folder: weights and config, the tokenizer, `training_args.bin`, and
        `trainer_state.json` whose `best_model_checkpoint` names the checkpoint it holds
        (null when no evaluation improved the metric: the folder then holds the final model).
    """
    target = Path(trainer.args.output_dir) / BEST_DIR
    trainer.save_model(str(target))  # the tokenizer too: it is the Trainer's processing_class
    if trainer.is_world_process_zero():
        # Checkpoint folders carry their trainer_state.json; save_model writes none.
        trainer.state.save_to_json(str(target / "trainer_state.json"))
    return target


def run_training(
    spec: dict,
    callbacks: list[TrainerCallback],
    *,
    resume_from_checkpoint: str | Path | None = None,
) -> Trainer:
    """Validate a spec, seed everything, train to the end and save the best model.

    Args:
        spec: A training spec; see `SPEC_FIELDS`.
        callbacks: Trainer callbacks, e.g. `CheckpointEventsCallback`; may be empty.
        resume_from_checkpoint: A checkpoint folder of an earlier attempt of this spec to
            continue from: Hugging Face restores the weights, optimizer, scheduler, RNG and
            callback states and skips the batches already trained on, so the run ends as an
            uninterrupted one would (when the checkpoint step is a multiple of
            `logging_steps`, as every evaluation step of the default spec is: the train loss
            logged after it averages the steps since the last log).

    Returns:
        The trained Trainer, holding the best model; it is saved to `<output_dir>/best`
        (see `save_best_model`).

    Raises:
        SpecError: If the spec is invalid.
        DatasetError: If the data set is unreadable, malformed or has fewer than two texts.
    """
    spec = validate_spec(spec)
    # Seed before the model is built: dropout and any newly initialised weights draw from it.
    # A resumed run seeds too (same weights before the checkpoint's replace them), and then
    # restores the checkpoint's RNG states.
    set_seed(spec["seed"])
    trainer = build_trainer(spec, callbacks)
    trainer.train(
        resume_from_checkpoint=str(resume_from_checkpoint) if resume_from_checkpoint else None
    )
    save_best_model(trainer)
    return trainer
