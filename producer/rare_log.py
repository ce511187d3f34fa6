"""A log that says a lasting failure once, then rarely: a full disk or dropped events cost a
line a minute, not one per batch. Standard library only (embedded in the pod script)."""

from __future__ import annotations

import logging
import time
from typing import Any

RARE_LOG_S = 60.0  # a lasting failure (full disk, events dropped) is logged this often at most


class RareLog:
    """Logs the first message, then at most one per ``every_s`` saying how many it skipped.

    A lasting failure (a full disk, events being dropped) then costs a log line a minute, not
    one per batch.

    Args:
        logger: where the messages go.
        every_s: the shortest time between two messages.
    """

    def __init__(self, logger: logging.Logger, every_s: float = RARE_LOG_S) -> None:
        self.logger, self.every_s, self._next_at, self._skipped = logger, every_s, 0.0, 0

    def __call__(self, level: int, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``message % args`` at ``level``, unless the last message is too recent."""
        now = time.monotonic()
        if now < self._next_at:
            self._skipped += 1
            return
        if self._skipped:
            message = f"{message} (and %d more since the last message)"
            args = (*args, self._skipped)
        self.logger.log(level, message, *args, exc_info=exc_info)
        self._next_at, self._skipped = now + self.every_s, 0
