"""Building `TrainingArguments` from a validated spec, and naming the field it refuses.

The program sets the arguments that keep, load and resume from the best checkpoint itself
(`_program_arguments`, the fields of `remote.schema.PROGRAM_OWNED`); a spec's other
`TrainingArguments` fields are passed as they are. `remote.spec.validate_spec` builds the
arguments once to check a spec; `remote.training.build_trainer` builds the ones it trains with.

Embedded verbatim in the pod script (see `remote.render`) like `remote.training`, so it depends
only on the standard library, torch and transformers and has no `from __future__` import.
"""

import re
from typing import Any

import torch
from transformers import TrainingArguments

from remote.schema import SPEC_FIELDS, SpecError, is_composite_metric, passthrough_fields


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
