"""A small filesystem that fills up: a size-limited tmpfs, mounted for a test or experiment.

The chaos experiment "a full disk" puts a training process's spool folder on one. Mounting
needs root (or ``CAP_SYS_ADMIN``); :class:`SmallDiskUnavailable` says why it failed, so a
caller can skip instead. The spool's unit tests use :func:`spool_disk`: the real thing where
it can be mounted, else the spool's writes made to fail as a full disk's do.

A tmpfs counts whole pages (4 KiB): every file, however small, takes at least one, and
``size`` is rounded up to a page.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BALLAST = ".ballast"  # the file fill() writes (and free() removes)


class SmallDiskUnavailable(RuntimeError):
    """No small filesystem can be mounted here (not root, no ``mount``, or it refused)."""


def mount_refusal() -> str | None:
    """Say why :func:`small_disk` cannot work in this process, or None when it may."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "not a POSIX system"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "no mount/umount binaries"
    return None


@contextlib.contextmanager
def small_disk(mount_point: str | os.PathLike[str], size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``size_bytes`` at ``mount_point`` for the duration; unmount after.

    Args:
        mount_point: an empty folder (created if missing).
        size_bytes: the filesystem's size (rounded up to whole pages by the kernel).

    Yields:
        The mount point.

    Raises:
        SmallDiskUnavailable: not root, or the mount was refused (say, in a container
            without ``CAP_SYS_ADMIN``).
    """
    folder = Path(mount_point)
    refusal = mount_refusal()
    if refusal is not None:
        raise SmallDiskUnavailable(refusal)
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={int(size_bytes)},mode=0777"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "ckpt-small-disk", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SmallDiskUnavailable(f"mount refused: {done.stderr.strip() or done.returncode}")
    try:
        yield folder
    finally:
        # A process still holding a file there (a training child that outlived the test)
        # must not leave the mount behind: detach it lazily then.
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged write may still use on the filesystem holding ``path``."""
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def fill(folder: str | os.PathLike[str], leave_bytes: int = 0) -> int:
    """Write a ballast file into ``folder`` until about ``leave_bytes`` are left free.

    Args:
        folder: a folder on the small filesystem.
        leave_bytes: what to leave free (rounded down to whole pages by the filesystem).

    Returns:
        The ballast's size in bytes.
    """
    path = Path(folder) / BALLAST
    chunk = b"\0" * 4096
    with open(path, "ab") as handle:
        while free_bytes(folder) > leave_bytes:
            try:
                handle.write(chunk[: max(1, min(len(chunk), free_bytes(folder) - leave_bytes))])
                handle.flush()
            except OSError as exc:  # full before the target: as full as it gets
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return path.stat().st_size


def free(folder: str | os.PathLike[str]) -> None:
    """Remove the ballast :func:`fill` wrote (the disk has room again)."""
    (Path(folder) / BALLAST).unlink(missing_ok=True)


class Disk:
    """A spool folder whose disk is filled and freed on demand.

    Real: a small tmpfs, filled with a ballast file. Else, and for the errors a tmpfs cannot
    make (EDQUOT, EROFS, EIO), the spool's writes in the folder (``producer.spool``'s
    ``open`` in append mode and ``Path.write_text``) fail as such a disk's would, after
    ``room`` bytes.

    Args:
        folder: the folder.
        real: the folder is a small tmpfs of :func:`small_disk`.
        patch: ``patch(target, name, value)``, undone after the test (pytest's
            ``monkeypatch.setattr``).
    """

    def __init__(self, folder: Path, real: bool, patch: Callable[..., None]) -> None:
        self.folder, self.real, self._patch = folder, real, patch
        self.error: int | None = None
        self.room = 0
        self._patched = False

    def fill(self, leave_bytes: int = 0) -> None:
        """Leave about ``leave_bytes`` free (on a tmpfs: whole pages)."""
        if self.real:
            fill(self.folder, leave_bytes)
        else:
            self.fail_with(errno.ENOSPC, leave_bytes)

    def fail_with(self, error: int, room: int = 0) -> None:
        """Make the spool's writes fail with ``error`` once ``room`` more bytes are written."""
        self._install()
        self.error, self.room = error, room

    def free(self) -> None:
        """Room again."""
        if self.real:
            free(self.folder)
        self.error = None

    def _install(self) -> None:
        if self._patched:
            return
        self._patched = True
        import producer.spool  # here: the rest of this module needs no producer

        real_open, real_write_text = open, Path.write_text

        def refusing_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            handle = real_open(path, mode, *args, **kwargs)
            if self.error is not None and "a" in mode and self._inside(path):
                return _RefusingFile(handle, self)
            return handle

        def refusing_write_text(path: Path, *args: Any, **kwargs: Any) -> int:
            if self.error is not None and self._inside(path):
                raise OSError(self.error, os.strerror(self.error))
            return real_write_text(path, *args, **kwargs)

        self._patch(producer.spool, "open", refusing_open, raising=False)
        self._patch(Path, "write_text", refusing_write_text)

    def _inside(self, path: Any) -> bool:
        return Path(path).resolve().is_relative_to(self.folder.resolve())


class _RefusingFile:
    """A file on a :class:`Disk` with ``room`` bytes left: writes that much, then fails."""

    def __init__(self, handle: Any, disk: Disk) -> None:
        self.handle, self.disk = handle, disk

    def write(self, data: bytes) -> int:
        room = max(0, self.disk.room)
        self.handle.write(data[:room])  # a partial write, as a full disk makes
        self.handle.flush()
        self.disk.room -= min(room, len(data))
        if len(data) > room and self.disk.error is not None:
            raise OSError(self.disk.error, os.strerror(self.disk.error))
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.handle, name)

    def __enter__(self) -> _RefusingFile:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.handle.close()


@contextlib.contextmanager
def spool_disk(
    folder: str | os.PathLike[str], size_bytes: int, patch: Callable[..., None]
) -> Iterator[Disk]:
    """A :class:`Disk` at ``folder``: a real tmpfs of ``size_bytes`` if one can be mounted.

    Args:
        folder: where (created if missing).
        size_bytes: the tmpfs's size.
        patch: see :class:`Disk`.

    Yields:
        The disk; a real one is unmounted afterwards.
    """
    path = Path(folder)
    try:
        with small_disk(path, size_bytes):
            yield Disk(path, True, patch)
            return
    except SmallDiskUnavailable:
        pass
    path.mkdir(parents=True, exist_ok=True)
    yield Disk(path, False, patch)
