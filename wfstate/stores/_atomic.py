"""Atomic, durable file replacement: the few lines python-atomicwrites did.

The sequence is: create a temp file exclusively *in the target's directory* (a rename
across filesystems is a copy, not atomic), write, flush, fsync it (so the data is on
disk before the name points at it), ``os.replace`` it over the target (atomic on POSIX),
then fsync the directory (so the rename itself survives a power cut). On any error the
temp file is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from wfstate.exceptions import DiskFull, StorageError

TEMP_SUFFIX = ".tmp"

# O_NOFOLLOW: never open a file through a symlink planted in the storage directory.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# How the stores open a file they read: never through a symlink, and with O_NONBLOCK, so
# that a FIFO planted under a file's name is opened (and refused, or read as empty) at
# once instead of blocking the reader until somebody writes to it. O_NONBLOCK means
# nothing for regular files.
READ_FLAGS = os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0)


def temp_name(target: Path) -> Path:
    """``.<name>.<random>.tmp`` beside the target: hidden, and recognisable by sweeps."""
    return Path(_temp_path(os.fspath(target)))


def _temp_path(target: str) -> str:
    return f"{_split(target)[1]}{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _split(target: str) -> tuple[str, str]:
    """``target``'s directory, and the start of its temp files' paths (``.<name>.``).

    Plain strings, kept per target (a run's file is written at every checkpoint):
    pathlib's conversions, and even ``os.path.split`` and ``join``, cost several
    microseconds each right after an fsync.
    """
    found = _SPLITS.get(target)
    if found is None:
        head, name = os.path.split(target)
        found = (head, os.path.join(head, f".{name}."))
        if len(_SPLITS) >= 10_000:
            _SPLITS.clear()
        _SPLITS[target] = found
    return found


_SPLITS: dict[str, tuple[str, str]] = {}


def target_of_temp(path: Path) -> str | None:
    """The target file name a temp file was written for, or None if it is not ours."""
    name = path.name
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    stem = name[1 : -len(TEMP_SUFFIX)]
    target, _, token = stem.rpartition(".")
    if len(token) != 12 or not target:
        return None
    return target


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _storage_error(action: str, path: str | os.PathLike[str], exc: OSError) -> StorageError:
    cls = DiskFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else StorageError
    return cls(f"could not {action} {path}: {exc.strerror or exc}", path=str(path))


def atomic_write(
    target: str | os.PathLike[str],
    data: bytes | Sequence[bytes],
    *,
    mode: int = 0o600,
    durable: bool = True,
) -> None:
    """Replace ``target`` with ``data`` (bytes, or pieces written one after the other)
    atomically.

    With ``durable=False`` the two fsyncs are skipped: the replacement is still atomic
    for a process crash, but may be lost (never half-written) in a power cut.

    Raises:
        StorageError: any OS error (``DiskFull`` for ENOSPC); ``target`` is intact and
            no temp file is left behind.
    """
    target = os.fspath(target)
    directory, temp_start = _split(target)
    # One draw of randomness for both names a durable write may need (temp and backup).
    tokens = os.urandom(12).hex()
    tmp = f"{temp_start}{tokens[:12]}{TEMP_SUFFIX}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as exc:
        raise _storage_error("create a temp file for", target, exc) from exc
    # A second name for the previous version, so that a failed directory fsync (after
    # which the rename may or may not survive) can be rolled back: a save either
    # succeeds durably or leaves the previous file as it was. A link costs no copy.
    backup: str | None = None
    try:
        try:
            # The mode asked for, whatever the umask (which can only have removed bits).
            if os.fstat(fd).st_mode & 0o7777 != mode:
                os.fchmod(fd, mode)
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if durable:
            backup = f"{temp_start}{tokens[12:]}{TEMP_SUFFIX}"
            try:
                os.link(target, backup, follow_symlinks=False)
            except FileNotFoundError:
                backup = None
        os.replace(tmp, target)
    except OSError as exc:
        for leftover in (tmp, backup):
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        raise _storage_error("write", target, exc) from exc
    if not durable:
        return
    try:
        fsync_dir(directory)
    except OSError as exc:
        # The rename may not survive a power cut: put the previous version back (or
        # remove the new file if there was none), so the caller sees a failed save.
        with contextlib.suppress(OSError):
            if backup is not None:
                os.replace(backup, target)
            else:
                os.unlink(target)
        raise _storage_error("sync the directory of", target, exc) from exc
    if backup is not None:
        # Not fsynced: a backup name left behind by a power cut is swept like a temp file.
        with contextlib.suppress(OSError):
            os.unlink(backup)


# Pieces written in one writev() at most (Linux's IOV_MAX is 1024).
_MAX_PIECES = 64


def _write_all(fd: int, data: bytes | Sequence[bytes]) -> None:
    """Write ``data``, or its pieces in order, to ``fd``. Pieces go in one ``writev``:
    at 100 KB, joining them first costs a copy of the document, and writing them one
    ``write`` each costs more than that (docs/performance.md)."""
    if not isinstance(data, bytes):
        if len(data) == 1:
            data = data[0]
        elif len(data) > _MAX_PIECES:
            data = b"".join(data)
        else:
            written = os.writev(fd, data)
            total = sum(map(len, data))
            if written == total:
                return
            # A short write (a signal, a nearly full disk): the rest the plain way.
            data = b"".join(data)[written:]
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def make_private_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and parents) and give the leaf exactly ``mode``."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)
    except OSError as exc:
        raise _storage_error("create the directory", path, exc) from exc
