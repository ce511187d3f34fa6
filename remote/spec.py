"""Validating a training spec: check each field, fill in the defaults, refuse what would fail.

The program's own fields (`remote.schema.SPEC_FIELDS`) are checked by their rules here; the
other fields, passed through to `TrainingArguments`, by their type annotation and then by
building `TrainingArguments` from the whole spec, so the trusted side refuses a bad spec,
naming the field, before a pod is paid for. The pod validates the spec again.

Embedded verbatim in the pod script (see `remote.render`) like `remote.training`, so it depends
only on the standard library, torch and transformers and has no `from __future__` import.
"""

import dataclasses
import enum
import functools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments
from transformers import __version__ as TRANSFORMERS_VERSION

# The arguments module owns how a spec becomes TrainingArguments; validation builds them the
# same way, so that what passes here is what the pod will train with.
from remote.arguments import _build_arguments
from remote.schema import (
    FALLBACK_METRIC,
    PROGRAM_OWNED,
    REQUIRED,
    SPEC_DEFAULTS,
    SPEC_FIELDS,
    SpecError,
    is_composite_metric,
)

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
