"""The final state depends only on the set of events: not on order, not on duplicates."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from scorer_worker.ranking import decide

from .helpers import begin, end, evaluation, fold, saved, train

losses = st.one_of(
    st.floats(min_value=0.0, max_value=10.0),
    st.sampled_from([math.nan, math.inf, -1.0, 0.0]),
)


@st.composite
def runs(draw):
    """A run of one or two attempts (the second resuming), with logs, evals, saves and an end."""
    steps = draw(st.integers(min_value=2, max_value=25))
    events = [begin(ts=0.0, max_steps=steps * 10)]
    retained: list[int] = []
    limit = draw(st.integers(min_value=1, max_value=4))
    resume_at = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=steps - 1)))
    ts = 1.0
    for attempt in (0, 1) if resume_at else (0,):
        first = 1 if attempt == 0 else resume_at + 1
        if attempt == 1:
            ts += 1
            events.append(end(resume_at * 10, "failed", ts=ts))  # the attempt that crashed
            ts += 1
            events.append(begin(ts=ts, resumed_from_step=resume_at * 10, max_steps=steps * 10))
        last = steps if attempt == 1 or not resume_at else draw(st.integers(resume_at, steps))
        for i in range(first, last + 1):
            ts += 1
            step = i * 10
            events.append(train(step - 5, draw(losses), ts=ts))
            if draw(st.booleans()):
                events.append(evaluation(step, draw(st.one_of(st.none(), losses)), ts=ts))
            if draw(st.booleans()):
                retained = [*retained, step][-limit:]
                events.append(saved(step, retained, ts=ts))
    if draw(st.booleans()):  # a run still in progress has no end yet
        events.append(end(steps * 10, draw(st.sampled_from(["completed", "failed"])), ts=ts + 1))
    return events


def summary(events):
    state = fold(events)
    decision = decide(state)
    scores = [(e.step, repr(e.score), e.eligible) for e in decision.evals]
    return state.fingerprint(), scores, decision.best.step if decision.best else None


@settings(max_examples=150, deadline=None)
@given(run=runs(), data=st.data())
def test_shuffled_and_repeated_events_give_the_same_state(run, data):
    expected = summary(run)
    repeats = data.draw(st.lists(st.sampled_from(run), max_size=len(run)))
    shuffled = data.draw(st.permutations(run + repeats))
    assert summary(shuffled) == expected


@settings(max_examples=50, deadline=None)
@given(run=runs())
def test_folding_twice_changes_nothing(run):
    assert summary(run + run) == summary(run)
