"""The offline listing of a run's checkpoints, scored by the same code as the live stream."""

from __future__ import annotations

import os
from typing import Any

from producer.wire import checkpoint_step
from scorer_worker.history import checkpoint_dirs, run_events
from scorer_worker.models import WireEvent
from scorer_worker.ranking import Decision, decide
from scorer_worker.scoring import Profile, get_profile
from scorer_worker.state import JobState

LISTING_JOB_ID = "offline-listing"


def fold_run(
    output_dir: str | os.PathLike[str], profile: Profile | None = None
) -> tuple[JobState, Decision]:
    """Fold a run folder's history into a state and decide on it, as the scorer would."""
    profile = profile or get_profile("default")
    state = JobState(LISTING_JOB_ID, profile=profile.name)
    for event in run_events(LISTING_JOB_ID, output_dir, ts=0.0):
        state.apply(WireEvent.model_validate(event))
    return state, decide(state, profile)


def list_checkpoints(
    output_dir: str | os.PathLike[str], profile: Profile | None = None
) -> list[dict[str, Any]]:
    """Return one entry per ``checkpoint-*`` folder, with its eval, score and flags.

    Keys: ``name``, ``step``, ``epoch``, ``eval_loss``, ``train_loss``, ``score``,
    ``breakdown``, ``is_best``, ``is_latest``. A checkpoint with no eval at its step has
    ``score`` None and is never best.

    Raises:
        FileNotFoundError: when the folder holds no trainer state.
    """
    _, decision = fold_run(output_dir, profile)
    by_step = {e.step: e for e in decision.evals}
    folders = checkpoint_dirs(output_dir)
    latest = max((checkpoint_step(d.name) or 0 for d in folders), default=None)
    best_step = decision.best.step if decision.best else None
    listing = []
    for folder in folders:
        step = checkpoint_step(folder.name) or 0
        scored = by_step.get(step)
        listing.append(
            {
                "name": folder.name,
                "path": str(folder.resolve()),
                "step": step,
                "epoch": scored.epoch if scored else None,
                "eval_loss": scored.eval_loss if scored else None,
                "train_loss": scored.train_loss if scored else None,
                "score": scored.score if scored else None,
                "breakdown": scored.breakdown if scored else None,
                "is_best": step == best_step,
                "is_latest": step == latest,
            }
        )
    return listing
