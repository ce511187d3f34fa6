"""What a job's row needs from its whole history, kept up to date event by event.

A row depends on the whole history: the best checkpoint, the latest train values, the last
two evaluations, the first and last timestamps. Recomputing them on every flush made a flush
cost O(history). The drain keeps them here instead, in the state head. An event that extends
the run (a train log or eval past every step seen, a checkpoint at a new step, the first end)
updates them in O(1), a new latest checkpoint in O(retained). Anything else (a resume, an
event at or below a step already seen, a second end) makes the drain load the whole state and
rebuild the summary with :meth:`Summary.rebuild`, which replays the records through the same
fold in step order: the sequence rules of DESIGN section 4 live here only.

Each pick carries its score breakdown, so the sink maps stored facts and never scores. A
summary stored before picks had one decodes with ``breakdown`` None; :attr:`Summary.stale`
then makes the drain's next change rebuild it, and until then the row's breakdown is null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from producer.wire import checkpoint_step

from .models import WireEvent
from .scoring import Profile, epochs_without_improvement, is_usable_loss, score_eval

_TRAIN_VALUES = ("loss", "learning_rate", "grad_norm")


@dataclass(frozen=True)
class Pick:
    """A scored evaluation, as much of it as a row shows."""

    step: int
    epoch: float | None
    eval_loss: float | None
    train_loss: float | None
    epochs_without_improvement: int
    score: float
    ordinal: int = 0  # position among the job's evaluations by step
    # The score's terms and context (score_eval's breakdown); None when stored by an older
    # version. Not hashed: a dict is not hashable.
    breakdown: dict[str, Any] | None = field(default=None, hash=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Pick:
        """Decode what ``vars(pick)`` gave (fields missing in older heads take defaults).

        Every drain decodes three picks from the head. A frozen dataclass's ``__init__`` sets
        each field through ``object.__setattr__``, which made these a third of the head's
        decoding, so the fields are set at once instead.
        """
        unknown = data.keys() - _PICK_FIELDS
        if unknown:
            raise TypeError(f"unknown pick fields: {sorted(unknown)}")
        pick = object.__new__(cls)
        pick.__dict__.update(_PICK_DEFAULTS)
        pick.__dict__.update(data)
        return pick


_PICK_FIELDS = frozenset(Pick.__dataclass_fields__)
_PICK_DEFAULTS = {f.name: f.default for f in fields(Pick) if f.default is not MISSING}


@dataclass
class Summary:
    """The row's aggregates of one job's facts (see the module docstring)."""

    first_ts: float | None = None
    last_ts: float | None = None
    max_step: int = 0
    max_train_step: int | None = None
    max_eval_step: int | None = None
    epoch_at: tuple[int, float] | None = None  # (step, epoch): the highest step with an epoch
    latest_train: dict[str, tuple[int, float]] = field(default_factory=dict)  # name: (step, v)
    last_eval: Pick | None = None
    previous_eval_loss: float | None = None
    latest_save: tuple[float, str] | None = None  # (ts, checkpoint) of the latest save
    retained: list[int] | None = None  # steps with a retained checkpoint; None before any save
    best: Pick | None = None
    best_by_eval_loss: Pick | None = None
    eval_count: int = 0  # evaluations kept

    @property
    def evals_since_best(self) -> int:
        """Evaluations after the best one (all of them while there is no best)."""
        return self.eval_count - 1 - self.best.ordinal if self.best else self.eval_count

    @property
    def stale(self) -> bool:
        """True when a pick was stored without its breakdown (by an older version)."""
        picks = (self.best, self.best_by_eval_loss, self.last_eval)
        return any(pick is not None and pick.breakdown is None for pick in picks)

    @property
    def diverged(self) -> bool:
        """True when the latest evaluation could not be scored (non-finite or missing loss)."""
        return self.last_eval is not None and not math.isfinite(self.last_eval.score)

    @property
    def usable_previous_eval_loss(self) -> float | None:
        """The loss of the evaluation before the latest one, if finite and non-negative."""
        previous = self.previous_eval_loss
        return previous if is_usable_loss(previous) else None

    def accepts(self, event: WireEvent, state: Any) -> bool:
        """Return True when ``event``, applied to ``state``, can be folded in incrementally.

        Called before the event is applied; ``state`` holds the records at the event's step.
        A :attr:`stale` summary accepts nothing: the change rebuilds it with breakdowns.
        """
        if self.stale:
            return False
        step = event.step
        if event.kind == "train_log":
            return _above(step, self.max_train_step) and _above(step, self.max_eval_step)
        if event.kind == "eval":
            train_ok = self.max_train_step is None or step >= self.max_train_step
            return _above(step, self.max_eval_step) and train_ok
        if event.kind == "checkpoint_saved":
            return step not in state.saves
        if event.kind == "train_end":
            return state.end is None
        if event.kind == "events_lost":
            return True  # a publisher's report: no training fact, nothing summarized
        # A train_begin may drop records (rebuild), unless nothing is known yet: a new job.
        return self.last_ts is None

    def proves_absent(self, event: WireEvent) -> bool:
        """Return True when no record exists yet at ``event``'s step (past the highest one)."""
        if event.kind == "train_log":
            return _above(event.step, self.max_train_step)
        if event.kind == "eval":
            return _above(event.step, self.max_eval_step)
        return False

    def observe(
        self,
        event: WireEvent,
        state: Any,
        profile: Profile,
        load_evals: Callable[[Iterable[int]], None],
    ) -> None:
        """Fold in an event that :meth:`accepts` approved and that changed ``state``.

        ``load_evals(steps)`` must load those steps' evaluation records into ``state``
        (a new latest checkpoint re-picks the best among the retained ones).
        """
        if event.kind == "events_lost":
            return  # the state keeps it (not a fact of the run: no time, no step)
        step = event.step
        # A begin's step is where it resumed, not progress.
        self._observe_fact(event.ts, None if event.kind == "train_begin" else step)
        if event.kind == "train_log":
            self._observe_train(step, state.train[step])
        elif event.kind == "eval":
            self._observe_eval(step, state.evals[step], profile)
        elif event.kind == "checkpoint_saved":
            self._observe_save(state, state.saves[step], profile, load_evals)

    @classmethod
    def rebuild(cls, state: Any, profile: Profile) -> tuple[Summary, list[Pick]]:
        """Fold every record of a fully loaded ``state`` afresh, in the order a run makes them.

        Train logs and evaluations go by step (a train log before the evaluation at its step:
        the pair's train loss is the latest at a step <= the eval's), then the latest save
        (the only one whose retained list counts). Each evaluation's context is stored on its
        record, which the incremental path reads when a new checkpoint re-picks the best.

        Returns:
            The summary, and every evaluation's pick in step order.
        """
        summary, picks = cls(), []
        for begin in state.begins:
            summary._observe_fact(begin.ts, None)
        ordered = sorted([(s, 0) for s in state.train] + [(s, 1) for s in state.evals])
        for step, is_eval in ordered:
            record = state.evals[step] if is_eval else state.train[step]
            summary._observe_fact(record.ts, step)
            if is_eval:
                picks.append(summary._observe_eval(step, record, profile))
            else:
                summary._observe_train(step, record)
        for step, save in state.saves.items():
            summary._observe_fact(save.ts, step)
        if state.latest_save is not None:  # every record is loaded: nothing to load
            summary._observe_save(state, state.latest_save, profile, lambda _steps: None)
        if state.end is not None:
            summary._observe_fact(state.end.ts, state.end.step)
        return summary, picks

    def _observe_fact(self, ts: float, step: int | None) -> None:
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        if step is not None:
            self.max_step = max(self.max_step, step)

    def _observe_train(self, step: int, record: Any) -> None:
        self.max_train_step = step
        self._observe_epoch(step, record.epoch)
        for name in _TRAIN_VALUES:
            value = getattr(record, name)
            if value is not None:
                self.latest_train[name] = (step, value)

    def _observe_epoch(self, step: int, epoch: float | None) -> None:
        if epoch is not None and (self.epoch_at is None or (step, epoch) > self.epoch_at):
            self.epoch_at = (step, epoch)

    def _observe_eval(self, step: int, record: Any, profile: Profile) -> Pick:
        previous = self.last_eval
        ewi = epochs_without_improvement(
            record.eval_loss,
            previous.eval_loss if previous else None,
            previous.epochs_without_improvement if previous else None,
        )
        train = self.latest_train.get("loss")
        record.paired_train_loss = train[1] if train else None
        record.epochs_without_improvement = ewi
        record.ordinal = self.eval_count
        self.eval_count += 1
        pick = pick_of(step, record, profile)
        self.previous_eval_loss = previous.eval_loss if previous else None
        self.last_eval = pick
        self.max_eval_step = step
        self._observe_epoch(step, record.epoch)
        if self.retained is None or step in self.retained:
            self.offer(pick)
        return pick

    def _observe_save(
        self,
        state: Any,
        record: Any,
        profile: Profile,
        load_evals: Callable[[Iterable[int]], None],
    ) -> None:
        if self.latest_save is not None and (record.ts, record.checkpoint) <= self.latest_save:
            return  # an older save: its retained list is not the current one
        self.latest_save = (record.ts, record.checkpoint)
        self.retained = retained_steps(record.retained)
        load_evals(self.retained)
        self.best = self.best_by_eval_loss = None
        for step in self.retained:
            if step in state.evals:
                self.offer(pick_of(step, state.evals[step], profile))

    def offer(self, pick: Pick) -> None:
        """Make ``pick`` the best (or best by eval loss) if it beats the current one."""
        if math.isfinite(pick.score) and (
            self.best is None or (pick.score, pick.step) < (self.best.score, self.best.step)
        ):
            self.best = pick
        by_loss = self.best_by_eval_loss
        if is_usable_loss(pick.eval_loss) and (
            by_loss is None or (pick.eval_loss, pick.step) < (by_loss.eval_loss, by_loss.step)
        ):
            self.best_by_eval_loss = pick

    def to_dict(self) -> dict[str, Any]:
        """Encode as JSON-ready values (non-finite floats stay floats: JSON extensions)."""
        # Shallow, field by field: dataclasses.asdict deep-copies, and this runs every commit.
        data = dict(vars(self))
        for name in ("last_eval", "best", "best_by_eval_loss"):
            data[name] = dict(vars(data[name])) if data[name] else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        """Decode what :meth:`to_dict` wrote."""
        data = dict(data)
        for name in ("last_eval", "best", "best_by_eval_loss"):
            data[name] = Pick.from_dict(data[name]) if data.get(name) else None
        for name in ("epoch_at", "latest_save"):
            data[name] = tuple(data[name]) if data.get(name) else None
        data["latest_train"] = {k: tuple(v) for k, v in data.get("latest_train", {}).items()}
        return cls(**data)

    def to_json(self) -> str:
        """Encode as canonical JSON (what tests compare: NaN equals NaN here)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def pick_of(step: int, record: Any, profile: Profile) -> Pick:
    """Score an evaluation record from its stored context (paired loss, epochs w/o impr.)."""
    ewi = record.epochs_without_improvement
    score = score_eval(record.eval_loss, record.paired_train_loss, ewi, profile)
    return Pick(
        step, record.epoch, record.eval_loss, record.paired_train_loss, ewi, score.value,
        record.ordinal, score.breakdown,
    )  # fmt: skip


def retained_steps(names: Iterable[str]) -> list[int]:
    """Return the steps of the checkpoint folder names, sorted (unparsable names skipped)."""
    return sorted({step for name in names if (step := checkpoint_step(name)) is not None})


def _above(step: int, highest: int | None) -> bool:
    return highest is None or step > highest
