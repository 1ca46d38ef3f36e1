"""The two locks of a run, taken with portalocker.

* The **write lock** is held around one read-modify-write of the state file. Writers
  wait for it up to ``lock_timeout`` and then get ``StateLocked``. It is re-entrant
  within a thread, so ``save()`` inside ``store.write_lock()`` does not deadlock.
* The **run lock** is held by whoever executes the run, for the whole execution. It is
  taken without waiting: a second executor fails at once with ``RunLocked`` naming the
  holder (pid, host, since). A dead holder's lock is free at once, because the OS drops
  an flock when its process dies: there is no lease to expire.

Order: an executor takes the run lock, then write locks; nobody takes the run lock
while holding a write lock, so the two can never deadlock.

The file backend locks sidecar files (``<id>.lock``, ``<id>.run.lock``) that are never
replaced: locking the JSON file itself would be useless, since ``os.replace`` swaps the
inode that holds the lock (filelock's documentation explains the trap). A sidecar is
only ever unlinked by a process that holds its lock (``forget``), and whoever acquires
a lock checks that its file still has a name (``st_nlink``): one that got the lock of
an unlinked file opens the path again, so two processes never hold two different
files of one name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any

import orjson
import portalocker

from wfstate.exceptions import RunLocked, StateLocked, StorageError
from wfstate.records import RunLockOwner, owner_from, unknown_owner
from wfstate.state import utcnow

# portalocker's flock locker, bound once: the module-level ``portalocker.lock()`` checks
# its flags and resolves the platform's locker on every call, which on the checkpoint
# path cost more than the flock itself (docs/storage.md has the figures).
_FLOCK = getattr(portalocker.portalocker, "FlockLocker", None)
_LOCKER: Any = _FLOCK() if _FLOCK is not None else None
_EXCLUSIVE_NB = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
_LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def owner_info() -> RunLockOwner:
    """Who we are, as a run lock records it."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": utcnow()}


def _provably_dead(owner: RunLockOwner) -> bool:
    """True when the recorded owner is a process of this host that no longer exists."""
    pid = owner.get("pid")
    if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _unlinked(fd: int) -> bool:
    """True when the (locked) file has no name any more: a forget() removed it."""
    try:
        return os.fstat(fd).st_nlink == 0
    except OSError:
        return False


def describe_owner(owner: RunLockOwner | None) -> str:
    if not owner or not owner["pid"]:
        return "another process"
    return f"pid {owner['pid']} on {owner['host']} since {owner['since']}"


class LockBackend(ABC):
    """Where the locks of runs live. Options come from the store's constructor."""

    def __init__(self) -> None:
        # Re-entrancy of write locks: per thread, workflow id -> depth. Thread-local, so
        # no guard is needed; another thread of this process still waits on the lock.
        self._local = threading.local()

    def write_lock(
        self, workflow_id: str, timeout: float
    ) -> contextlib.AbstractContextManager[None]:
        """Hold the write lock of a run (a context manager, re-entrant per thread).

        Raises:
            StateLocked: not acquired within ``timeout`` seconds.
        """
        return _WriteLock(self, workflow_id, timeout)

    @abstractmethod
    def _acquire_write(
        self, workflow_id: str, timeout: float
    ) -> contextlib.AbstractContextManager[None]:
        """A context manager holding the (non re-entrant) write lock."""

    @abstractmethod
    def run_lock(self, workflow_id: str) -> contextlib.AbstractContextManager[RunLockOwner]:
        """Hold the run lock for a whole execution; yields the owner info recorded.

        Raises:
            RunLocked: somebody else holds it (``owner`` says who).
        """

    @abstractmethod
    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        """The live holder of the run lock, or None when nobody executes the run."""

    def forget(self, workflow_id: str) -> None:  # noqa: B027 - optional hook
        """Drop whatever the backend keeps for a run that no longer exists.

        Called with the run's locks held by this thread (``delete``), or with none: a
        lock somebody else holds is left alone (their release, or the next ``forget``,
        removes it), never pulled from under them.
        """


class _WriteLock:
    """The write lock as a plain context manager (taken at every checkpoint, so no
    generator machinery): the first entry in a thread acquires, the last exit releases."""

    __slots__ = ("backend", "held", "timeout", "workflow_id")

    def __init__(self, backend: LockBackend, workflow_id: str, timeout: float) -> None:
        self.backend = backend
        self.workflow_id = workflow_id
        self.timeout = timeout
        self.held: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> None:
        depths: dict[str, int] = self.backend._local.__dict__.setdefault("depths", {})
        depth = depths.get(self.workflow_id, 0)
        if not depth:
            held = self.backend._acquire_write(self.workflow_id, self.timeout)
            held.__enter__()
            self.held = held
        depths[self.workflow_id] = depth + 1

    def __exit__(self, *exc_info: object) -> None:
        depths: dict[str, int] = self.backend._local.__dict__["depths"]
        remaining = depths[self.workflow_id] - 1
        if remaining:
            depths[self.workflow_id] = remaining
            return
        del depths[self.workflow_id]
        held, self.held = self.held, None
        if held is not None:
            held.__exit__(None, None, None)


def _flock_nb(fd: int) -> bool:
    """flock(LOCK_EX | LOCK_NB) on a bare descriptor: True when taken, False when held.

    ``fcntl.flock`` directly, as portalocker's flock locker does underneath (same lock,
    same errno meaning) without its flag checks and dispatch: this runs at every
    checkpoint, where those cost more than the system call.

    Raises:
        StorageError: the system call failed for another reason than a holder.
    """
    try:
        fcntl.flock(fd, _LOCK_EX_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise StorageError(f"could not lock {fd}: {exc}") from exc
    return True


def _funlock(fd: int) -> None:
    """Release a flock taken by ``_flock_nb``.

    Raises:
        portalocker.LockException: the system call failed (as portalocker raised it).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        raise portalocker.LockException(exc) from exc


def _poll(try_once: Any, timeout: float) -> bool:
    """Call ``try_once`` until it returns True or ``timeout`` passes.

    Backs off from 1 ms to 20 ms: short waits stay short (a write lock is held for a
    millisecond or so) without spinning on a long one.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        if try_once():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


class _FileWriteLock:
    """The file backend's write lock: re-entrant per thread as ``_WriteLock`` is, with
    the flock on ``<id>.lock`` (through a bare descriptor) taken in the same frame.

    A checkpoint takes it right after the previous one's fsync, when every Python call
    costs several times its warm price (docs/performance.md): one object here, where
    the generic path makes two and goes through two more frames.
    """

    __slots__ = ("backend", "fd", "timeout", "workflow_id")

    def __init__(self, backend: FileLockBackend, workflow_id: str, timeout: float) -> None:
        self.backend = backend
        self.workflow_id = workflow_id
        self.timeout = timeout
        self.fd = -1

    @property
    def held(self) -> _FileWriteLock | None:
        """This lock while it holds the file (``fd`` is the locked descriptor), as
        ``_WriteLock.held`` is the hold it took; None when an outer one holds it."""
        return self if self.fd >= 0 else None

    def __enter__(self) -> None:
        backend, workflow_id = self.backend, self.workflow_id
        depths: dict[str, int] = backend._local.__dict__.setdefault("depths", {})
        depth = depths.get(workflow_id, 0)
        if depth:
            depths[workflow_id] = depth + 1
            return
        name = f"{workflow_id}.lock"
        while True:
            # The mode is checked after locking, from the one fstat that also says
            # whether the file still has a name: a checkpoint pays one fstat, not two.
            fd = backend._open_fd(name, check_mode=False)
            try:
                if not _flock_nb(fd) and not _poll(partial(_flock_nb, fd), self.timeout):
                    raise StateLocked(
                        f"run {workflow_id}: write lock not acquired within "
                        f"{self.timeout:g}s ({backend.directory / name})",
                        workflow_id=workflow_id,
                    )
                st = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if st.st_nlink:
                break
            # forget() removed the file while we waited for it (rare): the lock that
            # counts now is the file of that name, if anyone made it again.
            _funlock(fd)
            os.close(fd)
        if st.st_mode & 0o7777 != backend.file_mode:
            with contextlib.suppress(OSError):
                os.fchmod(fd, backend.file_mode)
        self.fd = fd
        backend._held()[name] = fd
        depths[workflow_id] = 1

    def __exit__(self, *exc_info: object) -> None:
        backend = self.backend
        depths: dict[str, int] = backend._local.__dict__["depths"]
        workflow_id = self.workflow_id
        remaining = depths[workflow_id] - 1
        if remaining:
            depths[workflow_id] = remaining
            return
        del depths[workflow_id]
        fd, self.fd = self.fd, -1
        if fd < 0:
            return
        backend._held().pop(f"{workflow_id}.lock", None)
        try:
            _funlock(fd)
        finally:
            os.close(fd)


class FileLockBackend(LockBackend):
    """flock on sidecar files in the states directory (one host, or a local disk)."""

    def __init__(self, directory: Path, file_mode: int = 0o600) -> None:
        super().__init__()
        self.directory = directory
        self._directory_str = str(directory)
        self._prefix = os.path.join(self._directory_str, "")  # no join per checkpoint
        self.file_mode = file_mode

    def _held(self) -> dict[str, int]:
        """The sidecars this thread holds locked: name -> descriptor (for forget)."""
        held: dict[str, int] = self._local.__dict__.setdefault("held", {})
        return held

    def _open(self, name: str, *, create: bool = True) -> IO[bytes]:
        return os.fdopen(self._open_fd(name, create=create), "r+b", buffering=0)

    def _open_fd(self, name: str, *, create: bool = True, check_mode: bool = True) -> int:
        """Open a sidecar (``create=False``: FileNotFoundError when there is none;
        ``check_mode=False``: the caller fixes the mode itself, from its own fstat)."""
        path = f"{self._prefix}{name}"
        flags = os.O_RDWR | _NOFOLLOW | _CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, self.file_mode)
        except FileNotFoundError:
            if not create:
                raise
            raise StorageError(f"could not open lock file {path}: no such directory") from None
        except OSError as exc:
            raise StorageError(f"could not open lock file {path}: {exc.strerror}") from exc
        # Only when the umask or an old file left other bits: an fchmod every time
        # would dirty the inode, which the next fsync then has to write out.
        if not check_mode:
            return fd
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_mode & 0o7777 != self.file_mode:
                os.fchmod(fd, self.file_mode)
        return fd

    @staticmethod
    def _try_lock(fh: IO[bytes] | int) -> bool:
        try:
            if _LOCKER is not None:
                _LOCKER.lock(fh, _EXCLUSIVE_NB)
            else:
                portalocker.lock(fh, _EXCLUSIVE_NB)
        except portalocker.AlreadyLocked:
            return False
        except portalocker.LockException as exc:
            raise StorageError(f"could not lock {getattr(fh, 'name', fh)}: {exc}") from exc
        return True

    @staticmethod
    def _unlock(fh: IO[bytes] | int) -> None:
        if _LOCKER is not None:
            _LOCKER.unlock(fh)
        else:
            portalocker.unlock(fh)

    def write_lock(self, workflow_id: str, timeout: float) -> _FileWriteLock:
        return _FileWriteLock(self, workflow_id, timeout)

    def _acquire_write(
        self, workflow_id: str, timeout: float
    ) -> contextlib.AbstractContextManager[None]:
        # write_lock() above counts the depth and takes the flock itself: the generic
        # _WriteLock around this hook would count the depth twice.
        raise NotImplementedError("FileLockBackend.write_lock() takes the lock itself")

    @contextlib.contextmanager
    def run_lock(self, workflow_id: str) -> Iterator[RunLockOwner]:
        name = f"{workflow_id}.run.lock"
        while True:
            fh = self._open(name)
            try:
                self._take_run_lock(fh, workflow_id)
            except BaseException:
                fh.close()
                raise
            if not _unlinked(fh.fileno()):
                break
            # Removed by forget() (a delete) between our open and our lock: again.
            self._unlock(fh)
            fh.close()
        held = self._held()
        try:
            info = owner_info()
            try:
                # The owner info lives inside the lock file, which is never replaced:
                # whoever finds the lock held can say who holds it.
                fh.seek(0)
                fh.truncate()
                fh.write(orjson.dumps(info))
                held[name] = fh.fileno()
                yield info
            finally:
                held.pop(name, None)
                with contextlib.suppress(OSError):
                    fh.seek(0)
                    fh.truncate()
                self._unlock(fh)
        finally:
            fh.close()

    def _take_run_lock(self, fh: IO[bytes], workflow_id: str) -> None:
        """Lock ``fh`` without waiting for a live holder.

        ``run_lock_owner()`` probes by taking the lock for a few microseconds, and a
        holder writes its owner info just after locking: so a held lock with no owner
        info yet is worth a short wait, a held lock with an owner is not.

        Raises:
            RunLocked: somebody holds it (``owner`` says who, when they said).
        """
        owner: RunLockOwner | None = None

        def attempt() -> bool:
            nonlocal owner
            if self._try_lock(fh):
                return True
            owner = self._read_owner(fh)
            if owner and _provably_dead(owner):
                # Info left by a SIGKILLed holder while a prober holds the lock for a
                # moment: it names nobody, so wait for the prober instead.
                owner = None
            return bool(owner)

        if not _poll(attempt, 0.2) or owner:
            raise RunLocked(
                f"run {workflow_id} is being executed by {describe_owner(owner)}",
                workflow_id=workflow_id,
                owner=owner,
            )

    @staticmethod
    def _read_owner(fh: IO[bytes]) -> RunLockOwner | None:
        try:
            fh.seek(0)
            raw = fh.read(4096)
            data = orjson.loads(raw) if raw else None
        except (OSError, orjson.JSONDecodeError):
            return None
        return owner_from(data)

    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        for _ in range(100):
            try:
                # Never created here: a probe must not leave a sidecar behind.
                fh = self._open(f"{workflow_id}.run.lock", create=False)
            except FileNotFoundError:
                return None
            try:
                found = self._probe_owner(fh)
            finally:
                fh.close()
            if found is not _UNLINKED:
                return found if found is None else owner_from(found)
            # Removed by a delete while we probed: look at the file of that name now.
        return None

    def _probe_owner(self, fh: IO[bytes]) -> RunLockOwner | object | None:
        """The live owner recorded in ``fh``, None when it is free, ``unknown_owner()``
        when held by somebody who says nothing (yet), or ``_UNLINKED``."""
        found: object = None

        def attempt() -> bool:
            nonlocal found
            if self._try_lock(fh):
                found = None
                try:
                    if _unlinked(fh.fileno()):
                        found = _UNLINKED
                    # Free: any owner info is what a killed holder left behind. Clear
                    # it while we hold the lock, so nobody reads it as live.
                    elif os.fstat(fh.fileno()).st_size:
                        fh.truncate(0)
                except OSError:
                    pass
                finally:
                    self._unlock(fh)
                return True
            owner = self._read_owner(fh)
            if owner and _provably_dead(owner):
                owner = None
            found = owner
            # Held, but no owner yet (just locked) or a dead one's info (another prober
            # holds it for a moment): look again shortly.
            return bool(owner)

        if not _poll(attempt, 0.2):
            return unknown_owner()  # held by somebody who says nothing (yet)
        return found

    def forget(self, workflow_id: str) -> None:
        for name in (f"{workflow_id}.run.lock", f"{workflow_id}.lock"):
            self._unlink_sidecar(name)

    def _unlink_sidecar(self, name: str) -> None:
        """Unlink a lock file, only while holding its lock (ours, or taken now)."""
        path = os.path.join(self._directory_str, name)
        fd = self._held().get(name)
        if fd is not None:
            # Held by this thread (a delete): unlink it if the name is still our file.
            with contextlib.suppress(OSError):
                if _same_file(fd, path):
                    os.unlink(path)
            return
        try:
            fd = self._open_fd(name, create=False)
        except (FileNotFoundError, StorageError):
            return
        try:
            if not self._try_lock(fd):
                return  # somebody holds it: theirs to use; the next forget removes it
            try:
                if _same_file(fd, path):
                    os.unlink(path)
            except OSError:
                pass
            finally:
                self._unlock(fd)
        except StorageError:
            return
        finally:
            os.close(fd)


_UNLINKED = object()  # what a probe found: a lock file removed meanwhile


def _same_file(fd: int, path: str) -> bool:
    """True when ``path`` names the file open as ``fd`` (not a link, not a newer file)."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
