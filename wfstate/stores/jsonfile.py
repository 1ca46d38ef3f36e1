"""JSONFileStore: one JSON file per run, the source of truth (docs/state-file.md, docs/storage.md).

Layout under ``<root>/states/``::

    <id>.json            the state document (atomic, durable replacement)
    <id>.lock            write-lock sidecar (never replaced while the run exists)
    <id>.run.lock        run-lock sidecar, holding the executor's pid, host and start
    <id>.cancel          a cancellation request, polled by the executor
    <id>.outputs/        whole outputs of steps whose output was cut in the JSON
    <id>.loops/<name>.log  a loop's finished iterations: append-only framed records
    <id>.mailbox/        signals not yet taken: <received-ns>-<signal id>.json each
    .<name>.<rand>.tmp   a write in progress, or left by a crash (swept)

and ``<root>/quarantine/`` for corrupt state files ``doctor --fix`` moved aside.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import orjson

from wfstate.exceptions import (
    CorruptState,
    InvalidRunId,
    RunLocked,
    RunNotFound,
    StateLocked,
    StillRunning,
    StorageError,
)
from wfstate.records import RunLockOwner
from wfstate.state import WorkflowState, utcnow
from wfstate.stores._atomic import (
    _NOFOLLOW,
    READ_FLAGS,
    TEMP_SUFFIX,
    atomic_write,
    make_private_dir,
    target_of_temp,
)
from wfstate.stores._serialize import _read_plain, parse_state, serialize, serialize_parts
from wfstate.stores._sidefiles import SideFiles
from wfstate.stores.base import (
    _UUID4,
    StateStore,
    check_size,
    validate_id,
    validate_name,
)
from wfstate.stores.locks import LockBackend, describe_owner

# Lock backends by name; a dotted path to a LockBackend subclass works too.
LOCK_BACKENDS = {
    "file": "wfstate.stores.locks.FileLockBackend",
    "redis": "wfstate.stores.redis_locks.RedisLockBackend",
}

__all__ = ["LOCK_BACKENDS", "JSONFileStore", "parse_state", "serialize"]

logger = logging.getLogger("wfstate.stores")

# ``<id>.json`` of a valid run id (``validate_id``'s pattern).
_STATE_FILE = re.compile(rf"(?:{_UUID4.pattern})\.json")


def _import(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class JSONFileStore(SideFiles, StateStore):
    """State files under ``<root>/states/``.

    Args:
        root: the storage directory (``WFSTATE["STORAGE_DIR"]``).
        file_mode: mode of every file written (directories get 0o700).
        lock_timeout: seconds a writer waits for a write lock before ``StateLocked``.
        lock_backend: ``"file"``, ``"redis"`` or a dotted path to a ``LockBackend``.
        lock_options: keyword arguments of the lock backend (e.g. ``redis_url``).
        max_bytes: a state file larger than this is reported corrupt, not parsed; and
            ``save()`` refuses (``StateTooLarge``) to write one.

    ``root``, ``file_mode``, ``lock_timeout`` and ``lock_backend`` default to the
    ``STORAGE_DIR``, ``FILE_MODE``, ``LOCK_TIMEOUT`` and ``LOCK_BACKEND`` settings, and
    ``lock_options`` to ``{"redis_url": REDIS_URL}`` with the Redis backend; anything in
    ``STORE["OPTIONS"]`` wins.
    """

    setting_options: ClassVar[dict[str, str]] = {
        "root": "STORAGE_DIR",
        "file_mode": "FILE_MODE",
        "lock_timeout": "LOCK_TIMEOUT",
        "lock_backend": "LOCK_BACKEND",
    }

    @classmethod
    def options_from_settings(
        cls, setting: Callable[[str], Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        merged = super().options_from_settings(setting, options)
        if merged.get("lock_backend") == "redis" and "lock_options" not in options:
            merged["lock_options"] = {"redis_url": setting("REDIS_URL")}
        return merged

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        file_mode: int = 0o600,
        lock_timeout: float = 10.0,
        lock_backend: str = "file",
        lock_options: dict[str, Any] | None = None,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.root = Path(root)
        self.directory = self.root / "states"
        self._directory_str = str(self.directory)
        self._prefix = os.path.join(self._directory_str, "")  # "<root>/states/"
        self.file_mode = file_mode
        self.lock_timeout = lock_timeout
        self.max_bytes: int = max_bytes
        backend_cls = _import(LOCK_BACKENDS.get(lock_backend, lock_backend))
        self.locks: LockBackend = backend_cls(
            self.directory, file_mode=file_mode, **(lock_options or {})
        )
        self._dir_ready = False
        self._checked_ids: set[str] = set()

    def __repr__(self) -> str:
        return f"JSONFileStore({str(self.root)!r})"

    # --- paths ---------------------------------------------------------------------------

    def path_for(self, workflow_id: str) -> Path:
        return self.directory / f"{validate_id(workflow_id)}.json"

    def outputs_dir(self, workflow_id: str) -> Path:
        return self.directory / f"{validate_id(workflow_id)}.outputs"

    def loops_dir(self, workflow_id: str) -> Path:
        """Where the run's loop iterations are appended (see :mod:`wfstate.stores.records`)."""
        return self.directory / f"{validate_id(workflow_id)}.loops"

    def mailbox_dir(self, workflow_id: str) -> Path:
        return self.directory / f"{validate_id(workflow_id)}.mailbox"

    @property
    def quarantine_directory(self) -> Path:
        """Where ``quarantine()`` moves corrupt state files."""
        return self.root / "quarantine"

    def _ensure_dir(self) -> None:
        if not self._dir_ready:
            make_private_dir(self.root)
            make_private_dir(self.directory)
            self._dir_ready = True

    # --- locks ---------------------------------------------------------------------------

    def write_lock(self, workflow_id: str) -> contextlib.AbstractContextManager[None]:
        validate_id(workflow_id)
        self._ensure_dir()
        return self.locks.write_lock(workflow_id, self.lock_timeout)

    @contextlib.contextmanager
    def run_lock(self, workflow_id: str) -> Iterator[RunLockOwner]:
        validate_id(workflow_id)
        self._ensure_dir()
        with self.locks.run_lock(workflow_id) as info:
            try:
                yield info
            finally:
                # A run that does not exist (a resume of an unknown id, a task for a
                # deleted run) keeps no sidecar: removed while we still hold it.
                if not self.exists(workflow_id):
                    self.locks.forget(workflow_id)

    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        validate_id(workflow_id)
        if not self.directory.exists():
            return None
        return self.locks.run_lock_owner(workflow_id)

    # --- reading and writing ---------------------------------------------------------------

    def save(self, state: WorkflowState, *, durable: bool = True) -> None:
        workflow_id = state.workflow_id
        # An id is checked once per store (its regex, at every checkpoint, cost more
        # than the lookup that finds it checked).
        if type(workflow_id) is not str or workflow_id not in self._checked_ids:
            validate_id(workflow_id)
            if len(self._checked_ids) >= 10_000:
                self._checked_ids.clear()
            self._checked_ids.add(workflow_id)
        # A plain string: pathlib's conversions would cost more than the syscalls here.
        path = f"{self._prefix}{workflow_id}.json"
        if not self._dir_ready:
            self._ensure_dir()
        # The backend's lock directly: the id is checked and the directory made above.
        with self.locks.write_lock(workflow_id, self.lock_timeout):
            try:
                planted = stat.S_ISLNK(os.lstat(path).st_mode)
            except OSError:
                planted = False  # no file yet (or none we can see): nothing planted
            if planted:
                raise StorageError(
                    f"refusing to write run {state.workflow_id}: {path} is a symlink",
                    path=str(path),
                )
            previous = (state.revision, state.updated_at)
            state.revision += 1
            state.updated_at = utcnow()
            try:
                data = serialize_parts(state)
                # Never write what read_bytes() would refuse as corrupt.
                check_size(state.workflow_id, data, self.max_bytes)
                atomic_write(path, data, mode=self.file_mode, durable=durable)
            except BaseException:
                # The save did not happen: the in-memory state must not claim it did,
                # so that the next save writes the revision that follows the file's.
                state.revision, state.updated_at = previous
                raise

    def read_bytes(self, workflow_id: str) -> bytes:
        """The raw bytes of a state file (no symlink followed, size-limited).

        Raises:
            RunNotFound, CorruptState (too large, or a symlink), StorageError.
        """
        path = self.path_for(workflow_id)
        try:
            fd = os.open(path, READ_FLAGS)  # a FIFO is refused below, not waited on
        except FileNotFoundError:
            raise RunNotFound(f"no run {workflow_id} ({path} does not exist)") from None
        except OSError as exc:
            if path.is_symlink():
                raise CorruptState(
                    f"{path} is a symlink; state files are never read through links",
                    path=str(path),
                ) from None
            raise StorageError(f"could not read {path}: {exc.strerror}", path=str(path)) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptState(f"{path} is not a regular file", path=str(path))
            if st.st_size > self.max_bytes:
                raise CorruptState(
                    f"{path} is {st.st_size} bytes, more than the {self.max_bytes} a state may be",
                    path=str(path),
                )
            with open(fd, "rb", closefd=False) as fh:
                # Ask for the size we know (plus one byte, to see a file that grew): a
                # read(max_bytes) would allocate a 64 MiB buffer on every load.
                return fh.read(st.st_size + 1)
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror}", path=str(path)) from exc
        finally:
            os.close(fd)

    def load(self, workflow_id: str) -> WorkflowState:
        data = self.read_bytes(workflow_id)
        return parse_state(data, self.path_for(workflow_id), workflow_id)

    def exists(self, workflow_id: str) -> bool:
        return self.path_for(workflow_id).is_file()

    def delete(self, workflow_id: str) -> None:
        path = self.path_for(workflow_id)
        if not path.exists() and not path.is_symlink():
            raise RunNotFound(f"no run {workflow_id} ({path} does not exist)")
        # The run lock, without waiting, for the whole removal: an executor starting now
        # fails at once instead of bringing the run back to life behind us.
        try:
            held = self.locks.run_lock(workflow_id)
            held.__enter__()
        except RunLocked as exc:
            owner = exc.owner
            raise StillRunning(
                f"run {workflow_id} is being executed by {describe_owner(owner)}; "
                "cancel it before deleting it",
                workflow_id=workflow_id,
                owner=owner,
            ) from None
        try:
            with self.write_lock(workflow_id):
                if not path.exists() and not path.is_symlink():
                    raise RunNotFound(f"no run {workflow_id} ({path} does not exist)")
                self._remove_run_files(workflow_id, path)
                # The sidecars last, while we hold both: whoever waits on them finds
                # them unlinked once they get them, and then no run (locks.py).
                self.locks.forget(workflow_id)
        finally:
            held.__exit__(None, None, None)

    def _remove_run_files(self, workflow_id: str, path: Path) -> None:
        try:
            path.unlink()  # a planted symlink is removed itself, never its target
            self._remove_side_files(workflow_id)
        except OSError as exc:
            raise StorageError(f"could not delete {path}: {exc.strerror}", path=str(path)) from exc

    def _remove_side_files(self, workflow_id: str) -> None:
        """Everything kept beside a run's state but its lock sidecars (the caller holds
        them). Links planted in their place are removed themselves, never followed."""
        for directory in (
            self.outputs_dir(workflow_id),
            self.loops_dir(workflow_id),
            self.mailbox_dir(workflow_id),
        ):
            if directory.is_symlink():
                directory.unlink()
            else:
                shutil.rmtree(directory, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            self._cancel_path(workflow_id).unlink()

    def update(
        self,
        workflow_id: str,
        mutate: Callable[[WorkflowState], object],
        *,
        durable: bool = True,
    ) -> WorkflowState:
        try:
            return super().update(workflow_id, mutate, durable=durable)
        except RunNotFound:
            # The write lock of an unknown run made a sidecar: it goes (if free).
            if self.directory.exists() and not self.exists(workflow_id):
                self.locks.forget(workflow_id)
            raise

    def list(self) -> list[str]:
        # Every ``<id>.json`` with a valid id, by one pattern over each file name (a
        # sync lists 100,000 of them before it can start: no call per entry).
        try:
            with os.scandir(self.directory) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            return []
        match = _STATE_FILE.fullmatch
        return sorted([name[:-5] for name in names if match(name)])

    # --- cancellation requests ----------------------------------------------------------------

    def _cancel_path(self, workflow_id: str) -> Path:
        return self.directory / f"{validate_id(workflow_id)}.cancel"

    def request_cancel(self, workflow_id: str) -> None:
        path = self._cancel_path(workflow_id)
        self._ensure_dir()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, self.file_mode)
        except FileExistsError:
            return
        except OSError as exc:
            raise StorageError(f"could not request cancellation ({path}): {exc.strerror}") from exc
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps({"requested_at": utcnow(), "pid": os.getpid()}))

    def cancel_requested(self, workflow_id: str) -> bool:
        # Polled before every step: a string path (pathlib's costs more than the stat).
        return os.path.exists(f"{self._prefix}{validate_id(workflow_id)}.cancel")

    def clear_cancel(self, workflow_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._cancel_path(workflow_id).unlink()

    # --- big outputs ---------------------------------------------------------------------

    def _checked_outputs_dir(self, workflow_id: str) -> Path:
        directory = self.outputs_dir(workflow_id)
        if directory.is_symlink():
            # Never follow a link planted in the storage directory (it could point at
            # any directory: mkdir's chmod and the writes would land there).
            raise StorageError(f"refusing to use {directory}: it is a symlink", path=str(directory))
        return directory

    def save_output(self, workflow_id: str, state_name: str, stream: str, data: bytes) -> str:
        directory = self._checked_outputs_dir(workflow_id)
        path = directory / f"{validate_name(state_name)}.{validate_name(stream)}"
        with self.write_lock(workflow_id):
            make_private_dir(directory)
            atomic_write(path, data, mode=self.file_mode)
        return str(path)

    def load_output(self, workflow_id: str, state_name: str, stream: str) -> bytes:
        directory = self._checked_outputs_dir(workflow_id)
        path = directory / f"{validate_name(state_name)}.{validate_name(stream)}"
        try:
            fd = os.open(path, READ_FLAGS)
        except FileNotFoundError:
            raise RunNotFound(f"no output {stream} of {state_name} in run {workflow_id}") from None
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError(f"could not read {path}: not a regular file", path=str(path))
            with open(fd, "rb", closefd=False) as fh:
                return fh.read()
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"could not read {path}: {exc.strerror}", path=str(path)) from exc
        finally:
            os.close(fd)

    # --- maintenance -----------------------------------------------------------------------

    def orphan_side_files(self, *, grace: float = 2.0) -> dict[str, builtins.list[str]]:
        found: dict[str, builtins.list[str]] = {}
        newest: dict[str, float] = {}
        try:
            entries = os.scandir(self.directory)
        except FileNotFoundError:
            return {}
        names: set[str] = set()
        with entries:
            for entry in entries:
                names.add(entry.name)
                workflow_id = _side_id(entry.name)
                if workflow_id is None:
                    continue
                found.setdefault(workflow_id, []).append(entry.path)
                with contextlib.suppress(OSError):
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                    newest[workflow_id] = max(newest.get(workflow_id, 0.0), mtime)
        limit = time.time() - grace
        return {
            workflow_id: sorted(paths)
            for workflow_id, paths in sorted(found.items())
            if f"{workflow_id}.json" not in names and newest.get(workflow_id, 0.0) <= limit
        }

    def remove_orphan_side_files(
        self, orphans: Mapping[str, builtins.list[str]]
    ) -> builtins.list[str]:
        removed = []
        for workflow_id, paths in orphans.items():
            try:
                with self.locks.write_lock(workflow_id, 0):
                    if (self.directory / f"{workflow_id}.json").exists():
                        continue
                    for raw in paths:
                        path = Path(raw)
                        if path.name.endswith(".lock"):
                            continue  # the sidecars go last, below
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            path.unlink(missing_ok=True)
            except (StateLocked, OSError):
                continue
            self.locks.forget(workflow_id)
            removed.append(workflow_id)
        return removed

    def slot_lock(self, name: str) -> contextlib.AbstractContextManager[RunLockOwner]:
        """A run lock of the lock backend under the slot's name (see ``StateStore``)."""
        self._ensure_dir()
        return self.locks.run_lock(name)

    def slot_free(self, name: str) -> bool:
        return self.locks.run_lock_owner(name) is None

    def raw_reader(self) -> Callable[[str], bytes | None]:
        """Reads ``<id>.json`` in one ``os.read``, no lock (see ``StateStore``)."""
        return partial(_read_plain, os.path.join(self._directory_str, ""), self.max_bytes)

    def quarantine(self, workflow_id: str) -> str | None:
        """Move a corrupt ``<id>.json`` to ``<root>/quarantine/`` with its outputs, and
        drop its lock sidecars and cancel marker (see ``StateStore.quarantine``).

        Raises:
            StorageError: the file could not be moved.
        """
        source = self.path_for(workflow_id)
        target_dir = self.quarantine_directory
        held = self.locks.run_lock(workflow_id)
        try:
            held.__enter__()
        except RunLocked:
            return None  # an executor holds it: its next checkpoint rewrites the file
        try:
            with self.write_lock(workflow_id):
                try:
                    self.load(workflow_id)
                except CorruptState:
                    pass
                except RunNotFound:
                    return None
                else:
                    return None  # not corrupt (any more)
                target = self._quarantine_move(source, target_dir)
                outputs = self.outputs_dir(workflow_id)
                if outputs.is_dir() and not outputs.is_symlink():
                    self._quarantine_move(outputs, target_dir)
                loops = self.loops_dir(workflow_id)
                if loops.is_dir() and not loops.is_symlink():
                    self._quarantine_move(loops, target_dir)
                self.clear_cancel(workflow_id)
                self.locks.forget(workflow_id)
        finally:
            held.__exit__(None, None, None)
        return str(target)

    def _quarantine_move(self, source: Path, target_dir: Path) -> Path:
        try:
            make_private_dir(target_dir)
            target = target_dir / source.name
            if target.exists() or target.is_symlink():
                target = target_dir / f"{source.name}.{int(time.time() * 1000)}"
            # A rename within the storage directory; a copy if quarantine is elsewhere.
            try:
                os.replace(source, target)
            except OSError:
                shutil.move(str(source), str(target))
        except OSError as exc:
            raise StorageError(
                f"could not move {source} to quarantine: {exc.strerror or exc}", path=str(source)
            ) from exc
        return target

    def temp_files(self) -> builtins.list[Path]:
        """Temp files of interrupted writes (in the states and outputs directories)."""
        if not self.directory.exists():
            return []
        found = [p for p in self.directory.glob(f".*{TEMP_SUFFIX}") if target_of_temp(p)]
        found += [p for p in self.directory.glob(f"*.outputs/.*{TEMP_SUFFIX}") if target_of_temp(p)]
        found += [p for p in self.directory.glob(f"*.mailbox/.*{TEMP_SUFFIX}") if target_of_temp(p)]
        return sorted(found)

    def sweep(self) -> builtins.list[str]:
        """Remove temp files left by interrupted writes.

        Each is removed under its run's write lock, so a write in progress is never
        swept from under its writer; a run whose lock is busy is left for next time.
        """
        removed = []
        for path in self.temp_files():
            target = target_of_temp(path) or ""
            parent = path.parent
            workflow_id = target[:-5]
            for side in (".outputs", ".mailbox"):
                if parent.name.endswith(side):
                    workflow_id = parent.name[: -len(side)]
            try:
                validate_id(workflow_id)
                with self.locks.write_lock(workflow_id, 0):
                    path.unlink(missing_ok=True)
            except Exception:  # noqa: S112 - busy or odd: leave it for the next sweep
                continue
            removed.append(str(path))
        removed += self._sweep_orphaned_loops()
        return removed

    def _sweep_orphaned_loops(self) -> builtins.list[str]:
        """``<id>.loops/`` directories whose run is gone (a delete interrupted half-way)."""
        removed = []
        for directory in self.directory.glob("*.loops"):
            workflow_id = directory.name[: -len(".loops")]
            try:
                validate_id(workflow_id)
                with self.locks.write_lock(workflow_id, 0):
                    if self.path_for(workflow_id).exists():
                        continue
                    # The rest of what the interrupted delete left goes too (outputs,
                    # mailbox, cancel marker): the run is gone.
                    self._remove_side_files(workflow_id)
                    # No run, so no sidecar either (taking the lock made one).
                    self.locks.forget(workflow_id)
            except Exception:  # noqa: S112 - busy or odd: leave it for the next sweep
                continue
            removed.append(str(directory))
        return removed


# What sits beside ``<id>.json`` for a run (``orphan_side_files``).
_SIDE_SUFFIXES = (".run.lock", ".lock", ".cancel", ".outputs", ".loops", ".mailbox")


def _side_id(name: str) -> str | None:
    for suffix in _SIDE_SUFFIXES:
        if name.endswith(suffix):
            try:
                return validate_id(name[: -len(suffix)])
            except InvalidRunId:
                return None
    return None
