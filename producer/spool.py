"""An append-only local file of events not yet delivered to Redis.

The spool keeps delivery order across Redis outages and process restarts: events are
appended as JSON lines, and a side file records how many bytes were already delivered, so a
crash between delivery and bookkeeping re-sends (at least once) and never skips.
Standard library only.

A damaged side file (not a number, beyond the end, inside a line) is read as 0: the whole
spool is sent again, which at-least-once delivery allows, rather than events skipped.
:meth:`Spool.problems` says what is wrong with a spool, for ``ckpt-pipeline spool flush``.

A full, read-only or failing disk (ENOSPC, EDQUOT, EROFS, EIO): an append that fails raises
``OSError`` and takes back what it wrote (the file is cut to its size before the append), so
the caller still owns the whole batch; if even the cut fails, the torn last line is cut by
the next append and any complete lines of the batch are sent twice (at least once). A side
file that cannot be written is kept in memory instead, for this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path

from .rare_log import RareLog

log = logging.getLogger(__name__)


def default_spool_dir() -> Path:
    """Return ``$CKPT_SPOOL_DIR`` or ``~/.cache/checkpoint-pipeline/spool``."""
    configured = os.environ.get("CKPT_SPOOL_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "checkpoint-pipeline" / "spool"


class Spool:
    """Ordered, crash-safe file of encoded events for one job.

    Args:
        directory: folder for the spool files (created on first write).
        job_id: the job whose events are spooled; names the files.
        retry_max_s: longest wait of :meth:`offer` before it tries a refusing disk again.
    """

    def __init__(
        self, directory: str | os.PathLike[str], job_id: str, retry_max_s: float = 5.0
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{job_id}.events.jsonl"
        self._offset_path = self.directory / f"{job_id}.events.offset"
        self._lock = threading.Lock()
        # Delivered bytes of the current file that the side file could not record (a full
        # disk); 0 once the file is removed or started again.
        self._memory_offset = 0
        self.retry_max_s = retry_max_s
        self._retry_at, self._backoff_s = 0.0, 0.1
        self.refused_at = 0.0  # monotonic time :meth:`offer` last found the disk refusing
        self._disk_log = RareLog(log)

    def offer(self, encoded_events: list[str], force: bool = False) -> bool:
        """Append as :meth:`append` does, but return False where that raises ``OSError``.

        After a refusal the disk is left alone for a doubling backoff (0.1 s up to
        ``retry_max_s``), as the publisher leaves an unreachable Redis; ``force`` tries
        anyway. Refusals are logged: the first, then one a minute at most.

        Returns:
            True when the events are in the spool; False when the caller still owns them.
        """
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            self.append(encoded_events)
        except OSError as exc:
            self.refused_at = time.monotonic()
            self._retry_at = self.refused_at + self._backoff_s
            self._backoff_s = min(self._backoff_s * 2, self.retry_max_s)
            self._disk_log(logging.WARNING, "spool %s refused %d events (%s)", self.path,
                           len(encoded_events), exc.strerror or exc)  # fmt: skip
            return False
        self._retry_at, self._backoff_s = 0.0, 0.1
        return True

    def readable_pending(self) -> bool:
        """:meth:`pending`, or False (logged, rarely) when the disk cannot say."""
        try:
            return self.pending()
        except OSError as exc:  # an unreadable spool cannot be delivered: nothing waits on it
            self._disk_log(logging.WARNING, "spool %s unreadable (%s)", self.path, exc)
            return False

    def readable_batch(self, max_events: int) -> tuple[list[str], int]:
        """:meth:`read_batch`, or nothing (logged, rarely) when the disk cannot be read."""
        try:
            return self.read_batch(max_events)
        except OSError as exc:
            self._disk_log(logging.WARNING, "spool %s unreadable (%s)", self.path, exc)
            return [], 0

    def append(self, encoded_events: list[str]) -> None:
        """Append encoded events (one JSON text each) and fsync them.

        Raises:
            OSError: the disk refused them (full, read-only, failing). What was written of
                them is cut off again where possible (see the module docstring).
        """
        if not encoded_events:
            return
        data = "".join(text + "\n" for text in encoded_events).encode("utf-8")
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                # An offset left by a crash between the two unlinks below belongs to the old
                # file, not this one.
                self._offset_path.unlink(missing_ok=True)
                self._memory_offset = 0
                size = 0
            else:
                size = self._cut_torn_line()
            try:
                with open(self.path, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError:
                self._take_back(size)
                raise

    def _take_back(self, size: int) -> None:
        # A failed append may have written part of the batch; the caller keeps the whole
        # batch, so cutting it off avoids sending those lines twice. Shrinking a file needs no
        # free space; if it fails anyway, the next append cuts the torn line.
        with contextlib.suppress(OSError):
            os.truncate(self.path, size)

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
        """Record that everything before ``offset`` reached Redis; remove the spool when empty.

        Never raises: on a disk that refuses the side file (full, read-only) the offset is
        kept in memory, so this process does not send those events again; a crash before the
        side file is written sends them again from the last offset on disk (at least once).
        """
        with self._lock:
            self._memory_offset = max(self._memory_offset, offset)
            try:
                if self.path.exists() and offset >= self.path.stat().st_size:
                    self._offset_path.unlink(missing_ok=True)
                    self.path.unlink()
                    self._memory_offset = 0
                    return
                tmp = self._offset_path.with_suffix(".tmp")
                try:
                    tmp.write_text(str(offset), encoding="ascii")
                    os.replace(tmp, self._offset_path)
                except OSError:
                    tmp.unlink(missing_ok=True)  # a partial side file would waste the space
                    raise
            except OSError:
                pass  # kept in memory (above)

    def _cut_torn_line(self) -> int:
        # A crash mid-append leaves a partial last line; appending after it would glue the
        # next event to the fragment, so cut the file back to its last complete line.
        # Returns the size kept.
        with open(self.path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return 0
            handle.seek(size - 1)
            if handle.read(1) == b"\n":
                return size
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
            return keep

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
        # What this process delivered counts even where the side file could not say so.
        return max(self._checked_offset()[0], self._memory_offset)

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
