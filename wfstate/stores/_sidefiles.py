"""The file store's append-only and mailbox side files, beside ``<id>.json``:

    <id>.loops/<name>.log   a loop's finished iterations (framed records, fsynced)
    <id>.mailbox/           signals not yet taken, one atomically written file each

A mixin of :class:`~wfstate.stores.jsonfile.JSONFileStore` (which gives it
``directory``, the paths, ``write_lock``, ``file_mode`` and ``max_bytes``); the
contract these methods fulfil is ``StateStore``'s (docs/storage.md).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from wfstate.exceptions import StorageError
from wfstate.stores._atomic import (
    _CLOEXEC,
    _NOFOLLOW,
    READ_FLAGS,
    atomic_write,
    fsync_dir,
    make_private_dir,
)
from wfstate.stores.base import validate_name, validate_signal_id

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

logger = logging.getLogger("wfstate.stores")


class SideFiles:
    """Loop records and the signal mailbox, on disk (see the module docstring)."""

    directory: Path
    file_mode: int
    max_bytes: int

    if TYPE_CHECKING:

        def write_lock(self, workflow_id: str) -> AbstractContextManager[None]: ...
        def loops_dir(self, workflow_id: str) -> Path: ...
        def mailbox_dir(self, workflow_id: str) -> Path: ...

    # --- loop iterations (append-only side files) ------------------------------------------

    def _records_path(self, workflow_id: str, name: str) -> Path:
        directory = self.loops_dir(workflow_id)
        if directory.is_symlink():
            raise StorageError(f"refusing to use {directory}: it is a symlink", path=str(directory))
        return directory / f"{validate_name(name)}.log"

    def append_records(self, workflow_id: str, name: str, data: bytes) -> None:
        # A real append: the cost of an iteration never depends on how many came before.
        path = self._records_path(workflow_id, name)
        with self.write_lock(workflow_id):
            try:
                created = not path.parent.exists()
                if created:
                    make_private_dir(path.parent)
                fd = os.open(
                    path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC,
                    self.file_mode,
                )
            except OSError as exc:
                raise StorageError(
                    f"could not open {path}: {exc.strerror}", path=str(path)
                ) from exc
            try:
                new = os.fstat(fd).st_size == 0
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError as exc:
                raise StorageError(
                    f"could not append to {path}: {exc.strerror}", path=str(path)
                ) from exc
            finally:
                os.close(fd)
            if new:  # the file's name must survive a power cut too
                with contextlib.suppress(OSError):
                    fsync_dir(path.parent)
                    if created:
                        fsync_dir(self.directory)

    def read_records(self, workflow_id: str, name: str) -> bytes:
        path = self._records_path(workflow_id, name)
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror}", path=str(path)) from exc
        try:
            with open(fd, "rb", closefd=False) as fh:
                return fh.read()
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror}", path=str(path)) from exc
        finally:
            os.close(fd)

    def truncate_records(self, workflow_id: str, name: str, size: int) -> None:
        path = self._records_path(workflow_id, name)
        with self.write_lock(workflow_id):
            try:
                fd = os.open(path, os.O_WRONLY | _NOFOLLOW | _CLOEXEC)
            except FileNotFoundError:
                return
            except OSError as exc:
                raise StorageError(
                    f"could not open {path}: {exc.strerror}", path=str(path)
                ) from exc
            try:
                if os.fstat(fd).st_size > size:
                    os.ftruncate(fd, size)
                    os.fsync(fd)
            except OSError as exc:
                raise StorageError(
                    f"could not truncate {path}: {exc.strerror}", path=str(path)
                ) from exc
            finally:
                os.close(fd)

    # --- signals -------------------------------------------------------------------------------

    def _checked_mailbox(self, workflow_id: str) -> Path:
        directory = self.mailbox_dir(workflow_id)
        if directory.is_symlink():
            raise StorageError(f"refusing to use {directory}: it is a symlink", path=str(directory))
        return directory

    def post_signal(self, workflow_id: str, record: dict[str, Any]) -> str:
        signal_id = validate_signal_id(record.get("id"))
        directory = self._checked_mailbox(workflow_id)
        # Under the write lock: remove_signal drops the emptied directory under it too.
        with self.write_lock(workflow_id):
            make_private_dir(directory)
            # The time first, so that a directory listing sorted by name is arrival
            # order; the id in the name, so that a taken signal is known by name alone.
            path = directory / f"{time.time_ns():020d}-{signal_id}.json"
            # Durable before the sender is told "accepted" (a 202 is a promise).
            atomic_write(path, orjson.dumps(record), mode=self.file_mode, durable=True)
        return str(path)

    def pending_signals(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        directory = self._checked_mailbox(workflow_id)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue  # a write in progress (or left by a crash: swept)
            path = directory / name
            try:
                fd = os.open(path, READ_FLAGS)
            except FileNotFoundError:
                continue  # taken meanwhile
            except OSError as exc:
                raise StorageError(f"could not read {path}: {exc.strerror}") from exc
            try:
                with open(fd, "rb", closefd=False) as fh:
                    record = orjson.loads(fh.read(self.max_bytes))
            except (OSError, orjson.JSONDecodeError) as exc:
                # Written atomically, so never torn; a foreign file is left for doctor.
                logger.warning("ignoring unreadable signal file %s: %s", path, exc)
                continue
            finally:
                os.close(fd)
            if isinstance(record, dict) and name.endswith(f"-{record.get('id')}.json"):
                found.append(record)
            else:
                logger.warning("ignoring signal file %s: not a signal record", path)
        return found

    def remove_signal(self, workflow_id: str, signal_id: str) -> None:
        validate_signal_id(signal_id)
        directory = self._checked_mailbox(workflow_id)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(f"-{signal_id}.json") and not name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(directory / name)
        # An empty mailbox goes (a parked run keeps nothing but its files and locks).
        with self.write_lock(workflow_id), contextlib.suppress(OSError):
            os.rmdir(directory)
