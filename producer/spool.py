"""An append-only local file of events not yet delivered to Redis.

The spool keeps delivery order across Redis outages and process restarts: events are
appended as JSON lines, and a side file records how many bytes were already delivered, so a
crash between delivery and bookkeeping re-sends (at least once) and never skips.
Standard library only.
"""

from __future__ import annotations

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
            with open(self.path, encoding="utf-8") as handle:
                handle.seek(offset)
                while len(events) < max_events:
                    line = handle.readline()
                    if not line.endswith("\n"):
                        break  # a torn last line from a crash mid-append is left unread
                    offset += len(line.encode("utf-8"))
                    if line.strip():
                        events.append(line.rstrip("\n"))
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

    def _read_offset(self) -> int:
        try:
            return int(self._offset_path.read_text(encoding="ascii") or 0)
        except (FileNotFoundError, ValueError):
            return 0


def spool_files(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Return ``(job_id, path)`` for every spool file in ``directory``."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    suffix = ".events.jsonl"
    return sorted(
        (path.name[: -len(suffix)], path) for path in folder.glob(f"*{suffix}") if path.is_file()
    )
