"""When a job's row is due for a write: the write-coalescing rule, in one place.

A job logging every step would otherwise get a row write per drain. The rule: write at once
when the job ended, was never written, or an evaluation changed since the last write
(evaluations move the best checkpoint, which users wait for; they come seconds apart);
otherwise (train logs) write at most every ``min_interval_s``. The pump applies the rule on
every pass, so a deferred write is made as soon as it is due: no wake-up is lost.
"""

from __future__ import annotations

from .levels import Levels


def flush_due(levels: Levels, now: float, min_interval_s: float) -> bool:
    """Return True when the row should be written now (see the module docstring).

    A version the sink refused for good (wrong token, missing row) is not retried; the
    next version, or a new registration, is.
    """
    if not levels.sink_behind:
        return False
    if levels.finished or levels.last_flush_at is None or levels.eval_changed:
        return True
    return now - levels.last_flush_at >= min_interval_s
