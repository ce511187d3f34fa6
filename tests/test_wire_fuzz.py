"""A fuzz pass over the wire: whatever a pod XADDs, the drain dead-letters it or folds it,
and never raises (no worker dies of input)."""

from __future__ import annotations

import json
import time

import fakeredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from scorer_worker import keys
from scorer_worker.bulk import drain_many
from scorer_worker.drain import drain_job
from scorer_worker.errors import InvalidEvent
from scorer_worker.models import decode_entry
from scorer_worker.settings import Settings
from scorer_worker.store import load_state

JOB = "fuzz-job"
KINDS = ["train_begin", "train_log", "eval", "checkpoint_saved", "train_end", "other", 3, None]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.sampled_from(["nan", "inf", "-inf", "", "checkpoint-1", "checkpoint-²", "\x00\x1b[2J"]),
    st.text(max_size=20),
)


def _containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)


values = st.recursive(scalars, _containers, max_leaves=12)
events = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 1, 2, "1", None]),
        "job_id": st.sampled_from([JOB, JOB, "other-job", "", "a b"]),
        "kind": st.sampled_from(KINDS),
        "step": st.one_of(st.integers(-5, 2**40), scalars),
        "ts": st.one_of(st.floats(0, 2e9), scalars),
    },
    optional={
        "epoch": st.one_of(st.floats(0, 100), scalars),
        "metrics": st.dictionaries(st.sampled_from(["loss", "eval_loss", "x"]), scalars, max_size=3)
        | values,
        "info": st.fixed_dictionaries(
            {},
            optional={
                "resumed_from_step": st.one_of(st.integers(-1, 50), scalars),
                "checkpoint": st.sampled_from(["checkpoint-10", "checkpoint-x", None]),
                "retained": st.lists(st.sampled_from(["checkpoint-10", "checkpoint-20", "x"])),
                "status": st.sampled_from(["completed", "failed", "weird", None]),
                "error": st.text(max_size=30),
            },
        )
        | values,
    },
)
entries = st.one_of(
    events.map(lambda e: {"event": json.dumps(e)}),
    st.binary(max_size=200).map(lambda b: {"event": b}),
    st.dictionaries(
        st.text(min_size=1, max_size=6), st.binary(max_size=30), min_size=1, max_size=3
    ),
)


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entry=entries)
def test_decoding_any_entry_gives_an_event_or_an_invalid_event(entry):
    try:
        decode_entry(entry, JOB)
    except InvalidEvent as exc:
        assert exc.reason and "\n" not in exc.reason[:200]


@hyp_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(entries, min_size=1, max_size=12), bulk=st.booleans())
def test_draining_any_entries_never_raises_and_accounts_for_each(batch, bulk):
    fake = fakeredis.FakeRedis()
    for entry in batch:
        fake.xadd(keys.events(JOB), entry)
    settings = Settings(redis_url="redis://unused", drain_batch_events=5)
    if bulk:
        left = drain_many(fake, [JOB], settings, time.monotonic() + 5).left
        for job_id in left:
            drain_job(fake, job_id, settings)
    else:
        drain_job(fake, JOB, settings)
    assert fake.xlen(keys.events(JOB)) == 0
    state = load_state(fake, JOB)
    assert state.dead_letters == fake.xlen(keys.dead(JOB)) <= len(batch)
