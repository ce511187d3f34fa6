"""An append-only local file of events not yet delivered to Redis.

The spool keeps delivery order across Redis outages and process restarts: events are
appended as JSON lines, and a side file records how many bytes were already delivered, so a
crash between delivery and bookkeeping re-sends (at least once) and never skips.
Standard library only.

A damaged side file (not a number, beyond the end, inside a line) is read as 0: the whole
spool is sent again, which at-least-once delivery allows, rather than events skipped.
:meth:`Spool.problems` says what is wrong with a spool, for ``ckpt-pipeline spool flush``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class Spool:
    """Ordered, crash-safe file of encoded events for one job.

    Args:
        directory: folder for the spool files (created on first write).
        job_id: the job whose events are spooled; names the files.
    """

    def __init__(self, directory: str | os.PathLike[str], job_id: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{job_id}.events.jsonl"
        self._offset_path = self.directory / f"{job_id}.events.offset"
        self._lock = threading.Lock()

    def append(self, encoded_events: list[str]) -> None:
        """Append encoded events (one JSON text each) and fsync them."""
        if not encoded_events:
            return
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # An offset left by a crash between the two unlinks below belongs to the old
                # file, not this one.
                self._offset_path.unlink(missing_ok=True)
            else:
                self._cut_torn_line()
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("".join(text + "\n" for text in encoded_events))
                handle.flush()
                os.fsync(handle.fileno())

    def pending(self) -> bool:
        """Return True when the spool holds undelivered events."""
        with self._lock:
            return self.path.exists() and self.path.stat().st_size > self._read_offset()

    def undelivered_bytes(self) -> int:
        """Bytes of the spool not yet delivered (0 when there is no spool)."""
        with self._lock:
            if not self.path.exists():
                return 0
            return max(0, self.path.stat().st_size - self._read_offset())

    def read_batch(self, max_events: int) -> tuple[list[str], int]:
        """Return up to ``max_events`` undelivered events and the offset just after them."""
        with self._lock:
            if not self.path.exists():
                return [], 0
            offset = self._read_offset()
            events: list[str] = []
            # Bytes, not text: offsets are byte counts, and a damaged line must not stop the
            # delivery of the lines after it (it is sent as is; the scorer dead-letters it).
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                while len(events) < max_events:
                    line = handle.readline()
                    if not line.endswith(b"\n"):
                        break  # a torn last line from a crash mid-append is left unread
                    offset += len(line)
                    text = line.decode("utf-8", errors="replace").rstrip("\n")
                    if text.strip():
                        events.append(text)
            return events, offset

    def mark_delivered(self, offset: int) -> None:
        """Record that everything before ``offset`` reached Redis; remove the spool when empty."""
        with self._lock:
            if self.path.exists() and offset >= self.path.stat().st_size:
                self._offset_path.unlink(missing_ok=True)
                self.path.unlink()
                return
            tmp = self._offset_path.with_suffix(".tmp")
            tmp.write_text(str(offset), encoding="ascii")
            os.replace(tmp, self._offset_path)

    def _cut_torn_line(self) -> None:
        # A crash mid-append leaves a partial last line; appending after it would glue the
        # next event to the fragment, so cut the file back to its last complete line.
        with open(self.path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return
            keep = size
            while keep > 0:
                step = min(4096, keep)
                handle.seek(keep - step)
                chunk = handle.read(step)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = keep - step + newline + 1
                    break
                keep -= step
            handle.truncate(keep)

    def offset_problem(self) -> str | None:
        """Say why the side file is ignored (the spool is then sent again from its start)."""
        with self._lock:
            return self._checked_offset()[1]

    def damage(self, max_problems: int = 3) -> list[str]:
        """Describe the spool's damaged lines (empty when there are none), reading all of it.

        A complete line that is not UTF-8 JSON object text is damage: a spool holds only
        encoded events. A torn last line is not (a crash mid-append leaves one).
        """
        found: list[str] = []
        try:
            with open(self.path, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    if len(found) >= max_problems:
                        break
                    if line.endswith(b"\n") and line.strip() and not _is_event_text(line):
                        found.append(f"{self.path}: line {number} is not an encoded event")
        except FileNotFoundError:
            pass
        except OSError as exc:
            found.append(f"cannot read {self.path}: {exc.strerror or exc}")
        return found

    def _read_offset(self) -> int:
        return self._checked_offset()[0]

    def _checked_offset(self) -> tuple[int, str | None]:
        # Returns the offset to use and, when the side file had to be ignored, why.
        try:
            raw = self._offset_path.read_bytes()
        except FileNotFoundError:
            return 0, None
        except OSError as exc:
            return 0, f"cannot read {self._offset_path}: {exc.strerror or exc}"
        text = raw.decode("ascii", errors="replace").strip()
        if not text.isascii() or not text.isdigit():
            return 0, f"{self._offset_path} holds {text[:20]!r}, not a byte offset"
        offset = int(text)
        if offset == 0:
            return 0, None
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as handle:
                handle.seek(offset - 1)
                at_line_start = offset <= size and handle.read(1) == b"\n"
        except FileNotFoundError:
            return 0, None  # no spool: nothing to deliver, and append() drops the side file
        except OSError as exc:
            return 0, f"cannot read {self.path}: {exc.strerror or exc}"
        if not at_line_start:
            where = "beyond the end" if offset > size else "inside a line"
            return 0, f"{self._offset_path} says {offset}, {where} of {self.path} ({size} bytes)"
        return offset, None


def _is_event_text(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False


def spool_files(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Return ``(job_id, path)`` for every spool file in ``directory``."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    suffix = ".events.jsonl"
    return sorted(
        (path.name[: -len(suffix)], path) for path in folder.glob(f"*{suffix}") if path.is_file()
    )
