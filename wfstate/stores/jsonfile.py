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
import shutil
import stat
import time
import weakref
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
from wfstate.state import StepResult, StepStatus, WorkflowState, utcnow
from wfstate.stores._atomic import (
    _CLOEXEC,
    _NOFOLLOW,
    TEMP_SUFFIX,
    atomic_write,
    fsync_dir,
    make_private_dir,
    target_of_temp,
)
from wfstate.stores.base import (
    StateStore,
    check_size,
    validate_id,
    validate_name,
    validate_signal_id,
)
from wfstate.stores.locks import LockBackend, describe_owner

# Lock backends by name; a dotted path to a LockBackend subclass works too.
LOCK_BACKENDS = {
    "file": "wfstate.stores.locks.FileLockBackend",
    "redis": "wfstate.stores.redis_locks.RedisLockBackend",
}

logger = logging.getLogger("wfstate.stores")

DUMP_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


def serialize(state: WorkflowState) -> bytes:
    """The exact bytes of a state file: 2-space indent, keys in the model's order.

    The same bytes as ``orjson.dumps(state.shallow_dict(), option=DUMP_OPTIONS)`` (a
    property test holds the two equal), but each finished step's bytes are taken from
    a cache when the step has not changed since they were made: a checkpoint of a long
    run re-encodes only its header and the step in flight (docs/performance.md).
    """
    document = state.shallow_dict()
    states = document["states"]
    if type(states) is not dict or not states:
        return orjson.dumps(document, option=DUMP_OPTIONS)
    # Checking a cached step costs about what orjson takes to encode 1 KB: a state of
    # small steps is encoded in one call, as it was before there was a cache.
    key = id(state)
    seen = _STATE_SIZES.get(key)
    ref, average = seen if seen is not None and seen[0]() is state else (None, 0)
    if average < SPLICE_MIN_STEP_BYTES:
        data = orjson.dumps(document, option=DUMP_OPTIONS)
        _remember_size(state, key, ref, len(data) // len(states))
        return data
    # One atomic copy of the entries (another thread may add a step meanwhile).
    entries = list(states.items())
    pieces: list[bytes] = []
    append = pieces.append
    cache_get = _STEP_CACHE.get
    for name, step in entries:
        if type(step) is not StepResult or type(name) is not str:
            return orjson.dumps(document, option=DUMP_OPTIONS)  # odd: no splicing
        # The hit path inline (it runs for every finished step of every checkpoint).
        entry = cache_get(id(step))
        if entry is not None:
            live = step.__dict__
            if (
                entry.values == live
                and entry.name is name
                and entry.ref() is step
                and tuple(live) == entry.keys
            ):
                for field, number in entry.numbers:
                    if live[field] is not number:
                        break
                else:
                    append(entry.data)
                    continue
        append(_step_piece(name, step))
    document["states"] = None
    head = orjson.dumps(document, option=DUMP_OPTIONS)
    # Only a top-level key follows a newline and exactly two spaces (deeper lines are
    # indented further, and a newline inside a string is escaped): the marker is unique.
    at = head.index(_STATES_MARKER) + _STATES_OFFSET
    data = b"".join(
        (head[:at], b"{", b",".join(pieces), b"\n  }", head[at + 4 :])  # 4: len(b"null")
    )
    _remember_size(state, key, ref, len(data) // len(entries))
    return data


# The average bytes per step from which serialize() splices cached steps (tests set it
# to -1 to splice every state).
SPLICE_MIN_STEP_BYTES = 2048
# id(state) -> (weak reference to it, the average bytes per step of its last encoding).
_STATE_SIZES: dict[int, tuple[weakref.ref[WorkflowState], int]] = {}


def _remember_size(
    state: WorkflowState, key: int, ref: weakref.ref[WorkflowState] | None, average: int
) -> None:
    if ref is None:
        ref = weakref.ref(state, partial(_forget, _STATE_SIZES, key))
    _STATE_SIZES[key] = (ref, average)


# --- the cache of finished steps' bytes ---------------------------------------------------
#
# A finished step's result does not change, but nothing forbids changing it (a resume
# rewinds it, a test edits it). orjson encodes a step from its instance ``__dict__``, so
# an entry keeps a copy of that dict (the values themselves, not copies of them) and is
# used only while the step's ``__dict__`` holds the same keys in the same order and
# equal values, and its numbers are the very objects they were (``0 == False == 0.0``
# but the three encode differently). Entries are made only for steps whose values are
# all immutable (strings, numbers, None, the status), so no change in place can hide
# behind an equal reference; a container output is encoded afresh every time. An entry
# goes when its step object does (weak reference).

_STATES_MARKER = b'\n  "states": null'
_STATES_OFFSET = len(_STATES_MARKER) - 4
_IMMUTABLE = frozenset({str, type(None), StepStatus})
_NUMBERS = frozenset({int, float, bool})
_STEP_INDENT = orjson.OPT_INDENT_2


class _Entry:
    __slots__ = ("data", "keys", "name", "numbers", "ref", "values")

    def __init__(
        self,
        ref: weakref.ref[StepResult],
        name: str,
        values: dict[str, Any],
        numbers: tuple[tuple[str, Any], ...],
        data: bytes,
    ) -> None:
        self.ref = ref
        self.name = name
        self.values = values
        self.keys = tuple(values)
        self.numbers = numbers
        self.data = data


# id(step) -> its entry (with the step's name in ``states``, compared by identity).
_STEP_CACHE: dict[int, _Entry] = {}


def _step_piece(name: str, step: StepResult) -> bytes:
    """``\\n    "<name>": {...}``: one entry of ``states`` as the document holds it,
    encoded now (and kept, when the step is finished and holds only immutable values)."""
    live = step.__dict__
    # The step at depth 2 of the document: its own lines indented by four more spaces.
    data = orjson.dumps(step, option=_STEP_INDENT).replace(b"\n", b"\n    ")
    piece = b"\n    " + orjson.dumps(name) + b": " + data
    if step.status is not StepStatus.RUNNING:
        numbers = []
        for field, value in live.items():
            kind = type(value)
            if kind in _NUMBERS:
                numbers.append((field, value))
            elif kind not in _IMMUTABLE:
                return piece  # a container (or anything else): never cached
        key = id(step)
        _STEP_CACHE[key] = _Entry(
            weakref.ref(step, partial(_forget_step, key)), name, dict(live), tuple(numbers), piece
        )
    return piece


def _forget_step(key: int, ref: weakref.ref[StepResult]) -> None:
    entry = _STEP_CACHE.get(key)
    if entry is not None and entry.ref is ref:
        del _STEP_CACHE[key]


def _forget(table: dict[int, Any], key: int, ref: weakref.ref[Any]) -> None:
    entry = table.get(key)
    if entry is not None and entry[0] is ref:
        del table[key]


def _import(dotted: str) -> Any:
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class JSONFileStore(StateStore):
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
        # A plain string: pathlib's conversions would cost more than the syscalls here.
        path = f"{self._prefix}{validate_id(state.workflow_id)}.json"
        self._ensure_dir()
        # The backend's lock directly: the id is checked and the directory made above.
        with self.locks.write_lock(state.workflow_id, self.lock_timeout):
            if os.path.islink(path):
                raise StorageError(
                    f"refusing to write run {state.workflow_id}: {path} is a symlink",
                    path=str(path),
                )
            previous = (state.revision, state.updated_at)
            state.revision += 1
            state.updated_at = utcnow()
            try:
                data = serialize(state)
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
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
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
            outputs = self.outputs_dir(workflow_id)
            if outputs.is_symlink():
                outputs.unlink()
            else:
                shutil.rmtree(outputs, ignore_errors=True)
            loops = self.loops_dir(workflow_id)
            if loops.is_symlink():
                loops.unlink()
            else:
                shutil.rmtree(loops, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                self._cancel_path(workflow_id).unlink()
            mailbox = self.mailbox_dir(workflow_id)
            if mailbox.is_symlink():
                mailbox.unlink()
            else:
                shutil.rmtree(mailbox, ignore_errors=True)
        except OSError as exc:
            raise StorageError(f"could not delete {path}: {exc.strerror}", path=str(path)) from exc

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
        return sorted(self._iter_ids())

    def _iter_ids(self) -> Iterator[str]:
        try:
            entries = os.scandir(self.directory)
        except FileNotFoundError:
            return
        with entries:
            for entry in entries:
                name = entry.name
                if name.endswith(".json") and not name.startswith("."):
                    candidate = name[:-5]
                    with contextlib.suppress(Exception):
                        yield validate_id(candidate)

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
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
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
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
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
                fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
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
                    if directory.is_symlink():
                        directory.unlink()
                    else:
                        shutil.rmtree(directory)
                    # No run, so no sidecar either (taking the lock made one).
                    self.locks.forget(workflow_id)
            except Exception:  # noqa: S112 - busy or odd: leave it for the next sweep
                continue
            removed.append(str(directory))
        return removed


def _read_plain(prefix: str, max_bytes: int, workflow_id: str) -> bytes | None:
    """A plain state file's bytes in one ``os.read``, or None for anything unusual
    (missing, a link, not a regular file, too big, growing, unreadable, an odd id): the
    store's ``load()`` then says precisely what is wrong."""
    try:
        validate_id(workflow_id)
        fd = os.open(f"{prefix}{workflow_id}.json", os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except Exception:
        return None
    try:
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or size > max_bytes:
            return None
        data = os.read(fd, size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= size else None


def parse_state(data: bytes, path: Path | str, workflow_id: str | None = None) -> WorkflowState:
    """Parse a state file's bytes.

    Raises:
        CorruptState: empty, not JSON, invalid UTF-8, too deep, not an object, not a state,
            or a document whose ``workflow_id`` is not its file's.
    """
    if not data.strip():
        raise CorruptState(f"{path} is empty", path=str(path))
    try:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 levels with a
        # JSONDecodeError, never a RecursionError.
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptState(f"{path} is not valid JSON: {exc}", path=str(path)) from None
    if not isinstance(document, dict):
        raise CorruptState(
            f"{path} holds a JSON {type(document).__name__}, not a state object", path=str(path)
        )
    try:
        state = WorkflowState.from_dict(document)
    except (ValueError, RecursionError) as exc:
        raise CorruptState(f"{path} is not a valid state: {exc}", path=str(path)) from None
    if workflow_id is not None and state.workflow_id != workflow_id:
        raise CorruptState(
            f"{path} holds run {state.workflow_id!r}, not {workflow_id}", path=str(path)
        )
    return state


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
