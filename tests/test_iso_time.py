"""sink.rows.iso_time gives exactly datetime's isoformat text, whatever the timestamp."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from sink.rows import iso_time


def _reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def test_random_timestamps_match_datetime() -> None:
    rng = random.Random(20261202)
    stamps = [rng.uniform(0, 4e9) for _ in range(20_000)]
    stamps += [rng.uniform(0, 253_402_300_799.0) for _ in range(5_000)]
    stamps += [float(rng.randrange(0, 4_000_000_000)) for _ in range(2_000)]  # whole seconds
    # Just below and at a carry into the next second, and halves of a microsecond.
    stamps += [s + 0.9999995 for s in range(1_700_000_000, 1_700_000_200)]
    stamps += [s + 0.0000005 for s in range(1_700_000_000, 1_700_000_200)]
    stamps += [math.nextafter(s + 1.0, 0.0) for s in range(1_700_000_000, 1_700_000_200)]
    stamps += [0.0, 0.5, 1e-7, 253_402_300_799.0]
    for ts in stamps:
        assert iso_time(ts) == _reference(ts), ts


@pytest.mark.parametrize("ts", [-1.5, -0.0000004, -86_400.25])
def test_negative_timestamps_match_datetime(ts: float) -> None:
    assert iso_time(ts) == _reference(ts)


def test_none_stays_none() -> None:
    assert iso_time(None) is None
