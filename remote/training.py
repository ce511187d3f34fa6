"""The training program: fine-tune a causal LM on a JSONL text data set, driven by a spec dict.

Used in-process by the demo and the tests, and embedded verbatim in the generated pod script
together with the modules it imports, so it depends only on the standard library, torch and
transformers. It publishes nothing itself: the caller passes callbacks (on a pod,
`producer.CheckpointEventsCallback`). For the same reason it has no `from __future__` import,
which would be a syntax error anywhere but the top of a file.

The Trainer picks its best checkpoint (the one rotation keeps, `load_best_model_at_end` loads
and early stopping watches) by `metric_for_best_model`, by default the scorer's composite
`checkpoint_score`: a callback that follows the scorer writes it into each evaluation's metrics
as `eval_checkpoint_score`. `run_training` saves the loaded best model to `<output_dir>/best`.

A spec's fields are described in `remote.schema` and checked by `remote.spec.validate_spec`,
which refuses a bad spec, naming the field, before a pod is paid for; `remote.arguments` turns
it into `TrainingArguments` and `remote.dataset` reads, splits and tokenises the texts.

Checkpoints hold the optimizer, scheduler and RNG states, so that `run_training` can resume
from one (`resume_from_checkpoint`) and end as an uninterrupted run would.
"""

import logging
from pathlib import Path
from typing import Any

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    default_data_collator,
    set_seed,
)

from remote.arguments import training_arguments
from remote.dataset import load_texts, split_texts, tokenize_blocks
from remote.schema import COMPOSITE_METRIC, FALLBACK_METRIC, is_composite_metric

# README documents the spec's fields as `remote.training.SPEC_FIELDS` and
# `remote.training.PROGRAM_OWNED`; they live in remote.schema.
from remote.schema import PROGRAM_OWNED as PROGRAM_OWNED
from remote.schema import SPEC_FIELDS as SPEC_FIELDS
from remote.spec import validate_spec

BEST_DIR = "best"
"""Sub-folder of `output_dir` where `run_training` saves the best model for deployment."""

logger = logging.getLogger(__name__)


def follows_scorer(callback: Any) -> bool:
    """Return True when a Trainer callback puts `eval_checkpoint_score` into the metrics.

    `producer.CheckpointEventsCallback(follow_scorer=True)` does. This module must not import
    `producer`, so it asks the attribute rather than the type.
    """
    return getattr(callback, "follow_scorer", False) is True


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
