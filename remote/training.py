"""The training program: fine-tune a causal LM on a JSONL text data set, driven by a spec dict.

Used in-process by the demo and the tests, and embedded verbatim in the generated pod script, so
it depends only on the standard library, torch and transformers. It publishes nothing itself:
the caller passes callbacks (on a pod, `producer.CheckpointEventsCallback`). For the same reason
it has no `from __future__` import, which would be a syntax error anywhere but the top of a file.
"""

import json
import math
import random
import re
import urllib.request
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

REQUIRED = object()
"""Marker default of a field that the spec must set."""

SPEC_FIELDS: dict[str, str] = {
    "job_id": "Job id, 1 to 64 of [A-Za-z0-9_-]. Required.",
    "model": "Hub model name or local model folder, loaded with from_pretrained. Required.",
    "dataset": "Path or http(s) URL of a JSONL file whose lines hold a 'text' string. Required.",
    "eval_fraction": "Share of the texts held out for evaluation, in (0, 1). Default 0.2.",
    "output_dir": "Folder for checkpoint-* folders. Required.",
    "max_length": "Tokens per example; texts are truncated or padded to it. Default 64.",
    "seed": "Seed of the split, dropout and the data order, in [0, 2**32). Default 42.",
    "num_train_epochs": "Passes over the training texts (TrainingArguments). Default 3.",
    "per_device_train_batch_size": "Training batch size (TrainingArguments). Default 8.",
    "learning_rate": "Peak learning rate (TrainingArguments). Default 5e-4.",
    "eval_strategy": "'steps' or 'epoch' (TrainingArguments). Default 'steps'.",
    "eval_steps": "Steps between evaluations when eval_strategy is 'steps'. Default 10.",
    "save_strategy": "'steps' or 'epoch' (TrainingArguments). Default 'steps'.",
    "save_steps": "Steps between checkpoints when save_strategy is 'steps'. Default 10.",
    "save_total_limit": "Checkpoints kept after rotation, or None to keep all. Default None.",
    "logging_steps": "Steps between train_log entries (TrainingArguments). Default 5.",
}
"""What each spec field means; `validate_spec` accepts exactly these names."""

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
}

JOB_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
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
}


def validate_spec(spec: dict) -> dict:
    """Check a training spec and fill in defaults.

    Args:
        spec: Field name to value; see `SPEC_FIELDS`. Path values are accepted for path fields.

    Returns:
        A new dict holding every field of `SPEC_FIELDS`, defaults filled in.

    Raises:
        SpecError: If `spec` is not a dict, has unknown fields, misses a required field or holds
            a bad value. The message names the field.
    """
    if not isinstance(spec, dict):
        raise SpecError(f"spec must be a dict, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(SPEC_FIELDS), key=str)
    if unknown:
        raise SpecError(f"unknown spec field(s): {', '.join(map(repr, unknown))}")
    normalised = {}
    for field, default in SPEC_DEFAULTS.items():
        if field not in spec and default is REQUIRED:
            raise SpecError(f"spec field {field!r} is required: {SPEC_FIELDS[field]}")
        normalised[field] = _CHECKS[field](field, spec.get(field, default))
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


def training_arguments(spec: dict) -> TrainingArguments:
    """Build TrainingArguments from a validated spec.

    Args:
        spec: Output of `validate_spec`.

    Returns:
        Arguments that log, evaluate and save as the spec says, report to no integration and run
        on CPU when no CUDA device is present.
    """
    return TrainingArguments(
        output_dir=spec["output_dir"],
        num_train_epochs=spec["num_train_epochs"],
        per_device_train_batch_size=spec["per_device_train_batch_size"],
        per_device_eval_batch_size=spec["per_device_train_batch_size"],
        learning_rate=spec["learning_rate"],
        eval_strategy=spec["eval_strategy"],
        eval_steps=spec["eval_steps"],
        save_strategy=spec["save_strategy"],
        save_steps=spec["save_steps"],
        save_total_limit=spec["save_total_limit"],
        logging_strategy="steps",
        logging_steps=spec["logging_steps"],
        seed=spec["seed"],
        data_seed=spec["seed"],
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        save_only_model=True,
        dataloader_num_workers=0,
    )


def build_trainer(spec: dict, callbacks: list[TrainerCallback]) -> Trainer:
    """Build a Trainer for a spec: load model and data, split, tokenise.

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
    tokenizer = load_tokenizer(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"])
    train_texts, eval_texts = split_texts(
        load_texts(spec["dataset"]), spec["eval_fraction"], spec["seed"]
    )
    return Trainer(
        model=model,
        args=training_arguments(spec),
        data_collator=default_data_collator,
        train_dataset=tokenize_blocks(train_texts, tokenizer, spec["max_length"]),
        eval_dataset=tokenize_blocks(eval_texts, tokenizer, spec["max_length"]),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def run_training(spec: dict, callbacks: list[TrainerCallback]) -> None:
    """Validate a spec, seed everything and train to the end.

    Args:
        spec: A training spec; see `SPEC_FIELDS`.
        callbacks: Trainer callbacks, e.g. `CheckpointEventsCallback`; may be empty.

    Raises:
        SpecError: If the spec is invalid.
        DatasetError: If the data set is unreadable, malformed or has fewer than two texts.
    """
    spec = validate_spec(spec)
    # Seed before the model is built: dropout and any newly initialised weights draw from it.
    set_seed(spec["seed"])
    build_trainer(spec, callbacks).train()
