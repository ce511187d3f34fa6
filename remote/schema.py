"""The training spec's schema: its fields, their defaults, and what the program owns.

A spec is a dict (JSON on the way to a pod). Besides its own fields (`SPEC_FIELDS`), a spec may
set any other field that `TrainingArguments` accepts (`bf16`, `gradient_accumulation_steps`,
`lr_scheduler_type`, ...): it goes straight to `TrainingArguments`, except the fields the
program owns (`PROGRAM_OWNED`). `remote.spec.validate_spec` checks a spec against this schema.
A JSON null in any optional field means "not set".

Embedded verbatim in the pod script (see `remote.render`) like `remote.training`, so it depends
only on the standard library and has no `from __future__` import.
"""

from typing import Any

REQUIRED = object()
"""Marker default of a field that the spec must set."""

COMPOSITE_METRIC = "checkpoint_score"
"""The scorer's composite score as a Trainer metric; evaluations carry it as `eval_<name>`."""

FALLBACK_METRIC = "eval_loss"
"""What the Trainer picks by when the composite is not available: Hugging Face's own default."""

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


class SpecError(ValueError):
    """A training spec is invalid; the message names the offending field."""


def is_composite_metric(metric: str | None) -> bool:
    """Return True when `metric` names the composite score (with or without `eval_`)."""
    return metric is not None and metric.removeprefix("eval_") == COMPOSITE_METRIC


def passthrough_fields(spec: dict) -> dict[str, Any]:
    """Return the fields of a validated spec that go straight to `TrainingArguments`."""
    return {field: value for field, value in spec.items() if field not in SPEC_FIELDS}
