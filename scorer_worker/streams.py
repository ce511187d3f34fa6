"""A job's event stream as the drains read it: ids, sizes, and the bounded read of large ones."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from producer.wire import MAX_EVENT_BYTES, as_text

from .scripts import registered

MAX_ID_PART = 2**64 - 1  # both halves of a stream id are unsigned 64-bit integers
# A whole stream entry may hold one ``event`` field of MAX_EVENT_BYTES, plus the name.
ENTRY_MAX_BYTES = MAX_EVENT_BYTES + 64
DRAIN_READ_MAX_BYTES = 16 * 1024 * 1024
DEAD_HEAD_BYTES = 4096


def stream_id_key(entry_id: str | bytes) -> tuple[int, int]:
    """Return a stream entry id as ``(millis, sequence)``, which orders like the stream."""
    text = as_text(entry_id)
    millis, _, seq = text.partition("-")
    return int(millis), int(seq or 0)


def next_stream_id(entry_id: str) -> str | None:
    """Return the smallest stream id greater than ``entry_id``; None when there is none.

    A producer may XADD with an explicit id, up to ``18446744073709551615-18446744073709551615``;
    no id follows that one, so the drain must neither read nor trim past it.
    """
    millis, seq = stream_id_key(entry_id)
    if seq < MAX_ID_PART:
        return f"{millis}-{seq + 1}"
    if millis < MAX_ID_PART:
        return f"{millis + 1}-0"
    return None


@dataclass(frozen=True)
class OversizeEntry:
    """A stream entry larger than the event cap, read as its size and a head only."""

    size: int
    head: bytes

    @property
    def reason(self) -> str:
        """Why it is dead-lettered."""
        return f"entry of {self.size} bytes exceeds {ENTRY_MAX_BYTES} (all fields counted)"


def stream_bytes(redis: Any, key: str) -> int | None:
    """Return the memory a stream takes (``MEMORY USAGE``, exact), or None if unknown.

    Streams are trimmed as they are drained, so this is the size of what awaits draining.
    Unknown (a server without ``MEMORY``, e.g. fakeredis) makes readers take the bounded path.
    """
    try:
        return int(redis.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0") or 0)
    except ResponseError:
        return None


def read_after(
    redis: Any, key: str, after: str, count: int, max_bytes: int = DRAIN_READ_MAX_BYTES
) -> tuple[list[tuple[str, dict | OversizeEntry]], int]:
    """Return up to ``count`` entries of stream ``key`` after id ``after``, and the count asked.

    When the stream holds more than ``max_bytes``, the entries are read through a script
    (``lua/bounded_read.lua``) that hands over only entries within the event cap (and a
    capped head of the others, as :class:`OversizeEntry`), fewer of them: no read loads more
    than about ``max_bytes``, whatever a producer appended.
    """
    following = next_stream_id(after)
    if following is None:
        return [], count  # the cursor is the largest possible id: nothing can follow it
    measured = stream_bytes(redis, key)
    if measured is not None and measured <= max_bytes:
        entries = redis.xrange(key, following, "+", count)
        return [(as_text(entry_id), fields) for entry_id, fields in entries], count
    bounded = max(1, min(count, max_bytes // ENTRY_MAX_BYTES))
    script = registered(redis, "bounded_read")
    rows = script(keys=[key], args=[following, bounded, ENTRY_MAX_BYTES, DEAD_HEAD_BYTES])
    return [_bounded_entry(row) for row in rows], bounded


def _bounded_entry(row: list) -> tuple[str, dict | OversizeEntry]:
    if len(row) == 2:
        flat = row[1]
        return as_text(row[0]), dict(zip(flat[::2], flat[1::2], strict=True))
    return as_text(row[0]), OversizeEntry(int(row[1]), row[2])
