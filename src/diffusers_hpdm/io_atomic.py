"""Atomic output files: write a temporary file in the target folder, fsync it, check it, rename it into place.

A rename within one folder is atomic, so at every moment the target path holds either its previous content or the
complete new file, never a truncated one: a failed write (disk full, a killed process, a check that fails) leaves
any earlier file intact and removes its temporary file. `check_output_path` finds an unusable target (a missing
folder that cannot be created, a read-only folder, a path that is a folder) *before* long work starts.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

_CHUNK = 1 << 16
_os_write = os.write  # indirection so that tests can simulate a full disk mid-file


def fsync_dir(path: Path) -> None:
    """fsync a folder, so that a rename inside it is durable (a no-op where the filesystem cannot)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not fsync directories
        pass
    finally:
        os.close(fd)


def _new_file_mode() -> int:
    """0666 minus the process umask (read without changing it where /proc allows, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def check_output_path(path: str | os.PathLike, argument: str = "path", suffixes: tuple[str, ...] = ()) -> Path:
    """Make sure ``path`` can be written (creating its folder), without touching an existing file there.

    Args:
        path: the output file.
        argument: how the caller calls it (e.g. ``"--out"``), for the messages.
        suffixes: allowed extensions (lower case, with the dot); empty: any.

    Raises:
        `ValueError`: wrong extension, or ``path`` is a folder.
        `OSError`: the folder cannot be created or written (the message names ``argument`` and the folder).
    """
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise ValueError(f"{argument} must end in {' or '.join(suffixes)}, got {path.name!r}.")
    if path.is_dir():
        raise ValueError(f"{argument} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'out')!r}.")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            error.errno, f"{argument}: cannot create the folder {str(folder)!r} ({error.strerror or error}); "
            "choose a writable location."
        ) from None  # fmt: skip
    try:  # a real probe: os.access is wrong for root, ACLs and read-only mounts
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OSError(
            error.errno, f"{argument}: the folder {str(folder)!r} is not writable ({error.strerror or error}); "
            "choose a writable location."
        ) from None  # fmt: skip
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same extension) to write; on success fsync it, run ``check(tmp)``
    (which raises when the file is not what was meant to be written) and rename it to ``path``. On any exception
    the temporary file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0600 -> what open() would have given the file
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = _os_write(fd, view[:_CHUNK])
        if written <= 0:  # pragma: no cover - os.write raises instead on every platform we know
            raise OSError(errno.EIO, "write returned 0 bytes")
        view = view[written:]


def write_bytes_atomic(path: str | os.PathLike, data: bytes, check: Callable[[Path], None] | None = None) -> Path:
    """Write ``data`` to ``path`` atomically (see `atomic_path`); the file's size (and ``check(tmp)``, when given)
    is checked before the rename."""

    def check_all(tmp: Path) -> None:
        size = tmp.stat().st_size
        if size != len(data):
            raise OSError(errno.EIO, f"{path}: wrote {size} of {len(data)} bytes")
        if check is not None:
            check(tmp)

    with atomic_path(path, check_all) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`write_bytes_atomic` of UTF-8 ``text``."""
    return write_bytes_atomic(path, text.encode("utf-8"))
