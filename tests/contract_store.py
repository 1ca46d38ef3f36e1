"""A store written from the documented ``StateStore`` contract alone (docs/storage.md,
"Writing a store"): it shares no code with ``JSONFileStore`` beyond the helpers the
contract names (``validate_id``, ``validate_name``, ``check_size``).

Its own layout, under ``<root>/contract/``::

    runs/<id>/state.json            the document (SPEC §4), replaced atomically
    runs/<id>/cancel                a cancellation request
    runs/<id>/outputs/<state>.<stream>
    runs/<id>/mailbox/<ns>-<signal id>.json   signals not yet taken
    locks/<id>.write, locks/<id>.run   flock'ed lock files (the run lock's holds its owner)
    quarantine/<id>/                 corrupt runs moved aside

Several processes can share it (locks are ``fcntl.flock``), so the API and index tests
run against it too: ``WFSTATE_TEST_STORE=contract`` (tests/settings.py). With
``raw_reads=False`` it leaves the optional ``raw_reader`` at its default, so ``sync``
goes through ``load()``.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from wfstate.exceptions import (
    CorruptState,
    RunLocked,
    RunNotFound,
    StateLocked,
    StillRunning,
    StorageError,
)
from wfstate.records import RunLockOwner, owner_from, unknown_owner
from wfstate.state import WorkflowState, utcnow
from wfstate.stores.base import (
    StateStore,
    check_size,
    validate_id,
    validate_name,
    validate_signal_id,
)

# Temp files are hidden names ending ``.tmp`` (the convention docs/storage.md names).
TEMP_SUFFIX = ".tmp"


class ContractStore(StateStore):
    """Runs in directories of their own, locks in ``flock``'ed files.

    Args:
        root: the storage directory (``STORAGE_DIR`` by default).
        lock_timeout: seconds a writer waits (``LOCK_TIMEOUT`` by default).
        max_bytes: the largest document saved or read.
        raw_reads: offer ``raw_reader()`` (``sync``'s fast path) or not.
    """

    setting_options: ClassVar[dict[str, str]] = {
        "root": "STORAGE_DIR",
        "lock_timeout": "LOCK_TIMEOUT",
    }

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lock_timeout: float = 10.0,
        max_bytes: int = 16 * 1024 * 1024,
        raw_reads: bool = True,
    ) -> None:
        self.raw_reads = raw_reads
        self.base = Path(root) / "contract"
        self.runs = self.base / "runs"
        self.locks = self.base / "locks"
        self.lock_timeout = lock_timeout
        self.max_bytes = max_bytes
        self._local = threading.local()  # write-lock depth per thread and run

    def __repr__(self) -> str:
        return f"ContractStore({str(self.base)!r})"

    # --- places ----------------------------------------------------------------------------

    def _run_dir(self, workflow_id: str) -> Path:
        return self.runs / validate_id(workflow_id)

    def path_for(self, workflow_id: str) -> Path:
        return self._run_dir(workflow_id) / "state.json"

    def outputs_dir(self, workflow_id: str) -> Path:
        return self._run_dir(workflow_id) / "outputs"

    def _mkdirs(self, *paths: Path) -> None:
        for path in paths:
            try:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"could not create {path}: {exc.strerror}") from exc

    @staticmethod
    def _write(path: Path, data: bytes, *, durable: bool = True) -> None:
        """Temp file beside ``path``, fsync (if ``durable``), rename."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            with open(tmp, "xb") as fh:
                os.chmod(tmp, 0o600)
                fh.write(data)
                fh.flush()
                if durable:
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"could not write {path}: {exc.strerror}", path=str(path)) from exc

    # --- locks -----------------------------------------------------------------------------

    def _lock_file(self, workflow_id: str, kind: str, *, wait: float) -> int:
        """An fd holding the flock of ``locks/<id>.<kind>``, or -1 if not had in ``wait``.

        A lock file is only unlinked by its holder; one that got the lock of an
        unlinked file opens the name again.
        """
        self._mkdirs(self.locks)
        path = self.locks / f"{workflow_id}.{kind}"
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return -1
                    time.sleep(0.001)
            if os.fstat(fd).st_nlink:
                return fd
            os.close(fd)  # unlinked while we waited: the name's new file counts

    def _release(self, workflow_id: str, kind: str, fd: int) -> None:
        """Unlock; a run that does not exist keeps no lock file (unlinked while held)."""
        try:
            if not self.exists(workflow_id):
                with contextlib.suppress(OSError):
                    os.unlink(self.locks / f"{workflow_id}.{kind}")
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def write_lock(self, workflow_id: str) -> Iterator[None]:
        validate_id(workflow_id)
        depths: dict[str, int] = self._local.__dict__.setdefault("depths", {})
        if depths.get(workflow_id):
            depths[workflow_id] += 1
            try:
                yield
            finally:
                depths[workflow_id] -= 1
            return
        fd = self._lock_file(workflow_id, "write", wait=self.lock_timeout)
        if fd < 0:
            raise StateLocked(
                f"run {workflow_id}: write lock not acquired within {self.lock_timeout:g}s"
            )
        depths[workflow_id] = 1
        try:
            yield
        finally:
            del depths[workflow_id]
            self._release(workflow_id, "write", fd)

    @contextlib.contextmanager
    def run_lock(self, workflow_id: str) -> Iterator[RunLockOwner]:
        validate_id(workflow_id)
        fd = self._lock_file(workflow_id, "run", wait=0)
        if fd < 0:
            owner = self.run_lock_owner(workflow_id) or unknown_owner()
            raise RunLocked(
                f"run {workflow_id} is being executed by pid {owner['pid']} on "
                f"{owner['host']} since {owner['since']}",
                owner=owner,
            )
        info: RunLockOwner = {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow()}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            yield info
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            self._release(workflow_id, "run", fd)

    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        path = self.locks / f"{validate_id(workflow_id)}.run"
        deadline = time.monotonic() + 0.2
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raw = os.pread(fd, 4096, 0)
                    if raw:
                        with contextlib.suppress(ValueError):
                            owner = owner_from(json.loads(raw))
                            if owner is not None:
                                return owner
                    if time.monotonic() >= deadline:
                        return unknown_owner()  # held, by somebody who has not said who
                else:
                    return None  # free (the lock goes with the close)
            finally:
                os.close(fd)
            time.sleep(0.005)

    # --- documents -------------------------------------------------------------------------

    def save(self, state: WorkflowState, *, durable: bool = True) -> None:
        validate_id(state.workflow_id)
        with self.write_lock(state.workflow_id):
            previous = (state.revision, state.updated_at)
            state.revision += 1
            state.updated_at = utcnow()
            try:
                data = json.dumps(state.to_dict(), indent=2).encode()
                check_size(state.workflow_id, data, self.max_bytes)
                run_dir = self._run_dir(state.workflow_id)
                self._mkdirs(run_dir)
                self._write(run_dir / "state.json", data, durable=durable)
            except BaseException:
                state.revision, state.updated_at = previous
                raise

    def load(self, workflow_id: str) -> WorkflowState:
        path = self.path_for(workflow_id)
        try:
            size = path.stat().st_size
            if size > self.max_bytes:
                raise CorruptState(f"{path} is {size} bytes, over {self.max_bytes}", path=str(path))
            data = path.read_bytes()
        except FileNotFoundError:
            raise RunNotFound(f"no run {workflow_id} ({path} does not exist)") from None
        except OSError as exc:
            raise StorageError(f"could not read {path}: {exc.strerror}", path=str(path)) from exc
        if not data.strip():
            raise CorruptState(f"{path} is empty", path=str(path))
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise CorruptState(f"{path} is not valid JSON: {exc}", path=str(path)) from None
        if not isinstance(document, dict):
            kind = type(document).__name__
            raise CorruptState(f"{path} holds a JSON {kind}, not a state object", path=str(path))
        try:
            state = WorkflowState.from_dict(document)
        except (ValueError, RecursionError) as exc:
            raise CorruptState(f"{path} is not a valid state: {exc}", path=str(path)) from None
        if state.workflow_id != workflow_id:
            raise CorruptState(f"{path} holds run {state.workflow_id!r}", path=str(path))
        return state

    def exists(self, workflow_id: str) -> bool:
        return self.path_for(workflow_id).is_file()

    def list(self) -> builtins.list[str]:
        try:
            names = os.listdir(self.runs)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            with contextlib.suppress(Exception):
                if (self.runs / validate_id(name) / "state.json").is_file():
                    found.append(name)
        return sorted(found)

    def delete(self, workflow_id: str) -> None:
        if not self.exists(workflow_id):
            raise RunNotFound(f"no run {workflow_id}")
        try:
            held = self.run_lock(workflow_id)
            held.__enter__()
        except RunLocked as exc:
            raise StillRunning(f"{exc}; cancel it before deleting it", owner=exc.owner) from None
        try:
            with self.write_lock(workflow_id):
                if not self.exists(workflow_id):
                    raise RunNotFound(f"no run {workflow_id}")
                shutil.rmtree(self._run_dir(workflow_id))
        finally:
            held.__exit__(None, None, None)  # the run is gone: its lock files go too

    # --- cancellation ----------------------------------------------------------------------

    def request_cancel(self, workflow_id: str) -> None:
        run_dir = self._run_dir(workflow_id)
        self._mkdirs(run_dir)
        (run_dir / "cancel").touch(mode=0o600)

    def cancel_requested(self, workflow_id: str) -> bool:
        return (self._run_dir(workflow_id) / "cancel").exists()

    def clear_cancel(self, workflow_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._run_dir(workflow_id) / "cancel").unlink()

    # --- outputs ---------------------------------------------------------------------------

    def save_output(self, workflow_id: str, state_name: str, stream: str, data: bytes) -> str:
        directory = self.outputs_dir(workflow_id)
        path = directory / f"{validate_name(state_name)}.{validate_name(stream)}"
        with self.write_lock(workflow_id):
            self._mkdirs(directory)
            self._write(path, bytes(data))
        return str(path)

    def load_output(self, workflow_id: str, state_name: str, stream: str) -> bytes:
        path = (
            self.outputs_dir(workflow_id) / f"{validate_name(state_name)}.{validate_name(stream)}"
        )
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise RunNotFound(f"no output {stream} of {state_name} in run {workflow_id}") from None

    # --- signals (a mailbox: one file per signal, its id the name) -------------------------

    def post_signal(self, workflow_id: str, record: dict[str, Any]) -> str:
        signal_id = validate_signal_id(record.get("id"))
        directory = self._run_dir(workflow_id) / "mailbox"
        self._mkdirs(directory)
        path = directory / f"{time.time_ns():020d}-{signal_id}.json"
        self._write(path, json.dumps(record).encode("utf-8"))
        return str(path)

    def pending_signals(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        directory = self._run_dir(workflow_id) / "mailbox"
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("[0-9]*.json")):
            with contextlib.suppress(FileNotFoundError):
                found.append(json.loads(path.read_bytes()))
        return found

    def remove_signal(self, workflow_id: str, signal_id: str) -> None:
        directory = self._run_dir(workflow_id) / "mailbox"
        for path in directory.glob(f"*-{validate_signal_id(signal_id)}.json"):
            path.unlink(missing_ok=True)

    # --- maintenance -----------------------------------------------------------------------

    def raw_reader(self) -> Callable[[str], bytes | None] | None:
        if not self.raw_reads:
            return None
        return partial(_read_document, self.runs, self.max_bytes)

    def temp_files(self) -> builtins.list[Path]:
        if not self.runs.exists():
            return []
        return sorted(
            [*self.runs.glob(f"*/.*{TEMP_SUFFIX}"), *self.runs.glob(f"*/outputs/.*{TEMP_SUFFIX}")]
        )

    def sweep(self) -> builtins.list[str]:
        removed = []
        for path in self.temp_files():
            run_dir = path.parent if path.parent.name != "outputs" else path.parent.parent
            # Under the run's write lock, without waiting: a write in progress stays.
            fd = self._lock_file(run_dir.name, "write", wait=0)
            if fd < 0:
                continue
            try:
                path.unlink(missing_ok=True)
                removed.append(str(path))
            finally:
                self._release(run_dir.name, "write", fd)
        return removed

    def quarantine(self, workflow_id: str) -> str | None:
        target = self.base / "quarantine" / validate_id(workflow_id)
        try:
            held = self.run_lock(workflow_id)
            held.__enter__()
        except RunLocked:
            return None  # an executor's next checkpoint rewrites it
        try:
            with self.write_lock(workflow_id):
                try:
                    self.load(workflow_id)
                except CorruptState:
                    pass
                except RunNotFound:
                    return None
                else:
                    return None
                self._mkdirs(target.parent)
                if target.exists():
                    target = target.with_name(f"{workflow_id}.{int(time.time() * 1000)}")
                os.replace(self._run_dir(workflow_id), target)
                with contextlib.suppress(FileNotFoundError):
                    (target / "cancel").unlink()
        finally:
            held.__exit__(None, None, None)  # the run is gone: its lock files go too
        return str(target / "state.json")


def _read_document(runs: Path, max_bytes: int, workflow_id: str) -> bytes | None:
    """The stored document's bytes, or None for anything unusual (``load()`` says what)."""
    try:
        path = runs / validate_id(workflow_id) / "state.json"
        if path.is_symlink() or path.stat().st_size > max_bytes:
            return None
        return path.read_bytes()
    except Exception:
        return None
