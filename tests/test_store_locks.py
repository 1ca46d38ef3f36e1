"""The two locks of a run, across real processes (spawn start method).

Every case here runs against each lock backend through the ``lock_store_kwargs``
fixture. The children build their own store from the same keyword arguments (the store
never reads Django settings), so a backend only has to be added to the fixture.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import pytest

from tests import store_workers
from tests.helpers import wait_for
from wfstate.exceptions import RunLocked, StateLocked, StillRunning
from wfstate.state import WorkflowState
from wfstate.stores import JSONFileStore

CTX: SpawnContext = multiprocessing.get_context("spawn")
START_TIMEOUT = 60.0  # a spawned interpreter on a loaded machine


# Lock backends the shared cases run against: the file backend, and the Redis one
# (the machine's Redis; each test gets its own key prefix, deleted afterwards).
@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def lock_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def lock_store_kwargs(lock_backend: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """What a store (here and in the children) is built from: picklable, no settings."""
    kwargs: dict[str, Any] = {
        "root": str(tmp_path / "storage"),
        "lock_backend": lock_backend,
        "lock_timeout": 0.5,
    }
    if lock_backend != "redis":
        yield kwargs
        return
    from tests.helpers import REDIS_URL, delete_prefix, unique_prefix

    prefix = unique_prefix()
    kwargs["lock_options"] = {"redis_url": REDIS_URL, "prefix": prefix}
    yield kwargs
    delete_prefix(prefix)


@pytest.fixture
def lock_store(lock_store_kwargs: dict[str, Any]) -> JSONFileStore:
    return JSONFileStore(**lock_store_kwargs)


@pytest.fixture
def run_id(lock_store: JSONFileStore) -> str:
    state = WorkflowState.new("locks", inputs={"counter": 0})
    lock_store.save(state)
    return state.workflow_id


@pytest.fixture
def spawn() -> Iterator[Callable[..., SpawnProcess]]:
    """Start spawned children; any still alive at the end is killed and reaped."""
    started: list[SpawnProcess] = []

    def start(target: Callable[..., None], *args: Any) -> SpawnProcess:
        proc = CTX.Process(target=target, args=args, daemon=True)
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.is_alive():
            proc.kill()
        proc.join(10)


class Holder:
    """A child process holding one of the run's locks until released or killed."""

    def __init__(self, spawn: Callable[..., SpawnProcess], target: Callable[..., None], *args: Any):
        self.held = CTX.Event()
        self.release = CTX.Event()
        self.proc = spawn(target, *args, self.held, self.release)
        assert self.held.wait(START_TIMEOUT), "the child never took the lock"

    def kill(self) -> None:
        assert self.proc.pid is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.join(10)
        assert self.proc.exitcode == -signal.SIGKILL

    def stop(self) -> None:
        self.release.set()
        self.proc.join(10)
        assert self.proc.exitcode == 0


# --- the run lock ------------------------------------------------------------------------


def test_second_run_lock_fails_at_once_naming_pid_and_host(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    holder = Holder(spawn, store_workers.hold_run_lock, lock_store_kwargs, run_id)
    began = time.monotonic()
    with pytest.raises(RunLocked) as info, lock_store.run_lock(run_id):
        pass
    assert time.monotonic() - began < 0.5  # at once: no waiting for a timeout
    message = str(info.value)
    assert f"pid {holder.proc.pid}" in message
    assert socket.gethostname() in message
    assert info.value.owner["pid"] == holder.proc.pid
    assert info.value.code == "run_locked"
    assert isinstance(info.value, StateLocked)

    owner = lock_store.run_lock_owner(run_id)
    assert owner is not None
    assert owner["pid"] == holder.proc.pid
    assert owner["host"] == socket.gethostname()
    assert owner["since"].endswith("Z")

    holder.stop()
    assert lock_store.run_lock_owner(run_id) is None
    with lock_store.run_lock(run_id) as me:
        assert me["pid"] == os.getpid()


def test_sigkilled_run_lock_holder_frees_it_at_once(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    holder = Holder(spawn, store_workers.hold_run_lock, lock_store_kwargs, run_id)
    with pytest.raises(RunLocked), lock_store.run_lock(run_id):
        pass
    holder.kill()
    # No lease to expire: the OS dropped the lock with the process.
    assert lock_store.run_lock_owner(run_id) is None
    with lock_store.run_lock(run_id) as me:
        assert me["pid"] == os.getpid()
        assert lock_store.run_lock_owner(run_id) == me
    # And another process can take it too.
    second = Holder(spawn, store_workers.hold_run_lock, lock_store_kwargs, run_id)
    second.stop()


def test_stale_owner_info_is_never_reported(
    lock_backend: str, lock_store: JSONFileStore, run_id: str
) -> None:
    if lock_backend != "file":
        pytest.skip("the owner info inside the lock file is the file backend's")
    # A SIGKILLed holder leaves its owner info in the lock file; a prober that finds the
    # lock free must neither report it nor leave it for others to misread.
    lock_file = lock_store.directory / f"{run_id}.run.lock"
    lock_file.write_bytes(b'{"pid": 999999999, "host": "x", "since": "2026-01-01T00:00:00Z"}')
    assert lock_store.run_lock_owner(run_id) is None
    assert lock_file.read_bytes() == b""


def test_run_lock_in_the_same_process_is_refused(lock_store: JSONFileStore, run_id: str) -> None:
    with lock_store.run_lock(run_id), pytest.raises(RunLocked), lock_store.run_lock(run_id):
        pass


def test_delete_refused_while_run_locked(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    holder = Holder(spawn, store_workers.hold_run_lock, lock_store_kwargs, run_id)
    with pytest.raises(StillRunning, match=f"pid {holder.proc.pid}"):
        lock_store.delete(run_id)
    assert lock_store.exists(run_id)
    holder.kill()
    lock_store.delete(run_id)
    assert not lock_store.exists(run_id)


def test_delete_holds_the_run_lock_so_no_executor_brings_the_run_back(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    # A writer in another process holds the write lock: delete() waits inside.
    writer = Holder(spawn, store_workers.hold_write_lock, lock_store_kwargs, run_id)
    deleter_store = JSONFileStore(**{**lock_store_kwargs, "lock_timeout": 60.0})
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            deleter_store.delete(run_id)
        except BaseException as exc:
            errors.append(exc)

    deleter = threading.Thread(target=delete)
    deleter.start()
    # The delete holds the run lock while it waits (the old one never took it: then we
    # go on after the deadline, and the executor below brings the run back).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: lock_store.run_lock_owner(run_id), timeout=30, what="the run lock")
    # An executor starts meanwhile: it must be refused, not load the run and save it.
    go, results = CTX.Event(), CTX.Queue()
    executor = spawn(store_workers.execute_after, lock_store_kwargs, run_id, go, results)
    first = results.get(timeout=START_TIMEOUT)
    writer.stop()
    deleter.join(60)
    go.set()
    executor.join(60)
    assert errors == []
    assert first == "locked"
    assert not lock_store.exists(run_id)
    # A late executor finds no run, and leaves nothing behind.
    late = spawn(store_workers.execute_after, lock_store_kwargs, run_id, go, results)
    assert results.get(timeout=START_TIMEOUT) == "gone"
    late.join(60)
    assert [n for n in os.listdir(lock_store.directory) if n.startswith(run_id)] == []


def test_forget_leaves_a_lock_another_process_holds(
    lock_store: JSONFileStore,
    lock_store_kwargs: dict[str, Any],
    lock_backend: str,
    run_id: str,
    spawn: Any,
) -> None:
    if lock_backend != "file":
        pytest.skip("lock files are the file backend's")
    holder = Holder(spawn, store_workers.hold_write_lock, lock_store_kwargs, run_id)
    lock_store.locks.forget(run_id)
    # Still there, and still excluding us: an unlinked lock file would let a second
    # writer lock a new file of the same name while the holder writes.
    assert (lock_store.directory / f"{run_id}.lock").exists()
    with pytest.raises(StateLocked), lock_store.write_lock(run_id):
        pass
    holder.stop()
    lock_store.locks.forget(run_id)  # free now: removed
    assert not (lock_store.directory / f"{run_id}.lock").exists()


def test_a_writer_waiting_on_a_lock_file_that_is_removed_takes_the_new_one(
    lock_store: JSONFileStore, lock_backend: str, run_id: str
) -> None:
    if lock_backend != "file":
        pytest.skip("lock files are the file backend's")
    path = lock_store.directory / f"{run_id}.lock"
    got: dict[str, Any] = {}

    def waiter() -> None:
        lock = lock_store.locks.write_lock(run_id, 30)
        with lock:
            assert lock.held is not None
            got["ino"] = os.fstat(lock.held.fd).st_ino  # type: ignore[attr-defined]
            got["path_ino"] = os.stat(path).st_ino if path.exists() else None

    def opened_by_two() -> bool:
        # Our own descriptor and the waiter's, open on the lock file.
        links = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                links.append(os.readlink(f"/proc/self/fd/{fd}"))
        return links.count(str(path)) >= 2

    with lock_store.write_lock(run_id):
        thread = threading.Thread(target=waiter)
        thread.start()
        wait_for(opened_by_two, timeout=30, what="the waiter to open the lock file")
        lock_store.locks.forget(run_id)  # held by us: unlinked under the lock
        assert not path.exists()
    thread.join(60)
    # The waiter got the unlinked file's lock, saw it had no name, and locked the file
    # of that name instead (an unlinked file's lock excludes nobody who comes later).
    assert got["ino"] == got["path_ino"]


# --- the write lock ---------------------------------------------------------------------


def test_writer_waiting_past_lock_timeout_gets_state_locked(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    holder = Holder(spawn, store_workers.hold_write_lock, lock_store_kwargs, run_id)
    state = lock_store.load(run_id)  # reading takes no lock
    before = lock_store.path_for(run_id).read_bytes()
    began = time.monotonic()
    with pytest.raises(StateLocked) as info:
        lock_store.save(state)
    waited = time.monotonic() - began
    assert 0.5 <= waited < 3.0
    assert not isinstance(info.value, RunLocked)
    assert isinstance(info.value, TimeoutError)
    assert info.value.code == "state_locked"
    assert run_id in str(info.value)
    assert lock_store.path_for(run_id).read_bytes() == before
    assert state.revision == 1  # the refused save did not count
    holder.stop()
    lock_store.save(state)
    assert lock_store.load(run_id).revision == 2


def test_writer_gets_the_lock_when_released_within_timeout(
    lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    store = JSONFileStore(**{**lock_store_kwargs, "lock_timeout": 30.0})
    holder = Holder(spawn, store_workers.hold_write_lock, lock_store_kwargs, run_id)
    done = threading.Event()

    def save() -> None:
        store.update(run_id, lambda s: s.inputs.update(counter=1))
        done.set()

    waiter = threading.Thread(target=save)
    waiter.start()
    assert not done.wait(0.2)  # blocked by the child
    holder.stop()
    assert done.wait(10)
    waiter.join()
    assert store.load(run_id).inputs["counter"] == 1


def test_sigkilled_write_lock_holder_frees_it(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    holder = Holder(spawn, store_workers.hold_write_lock, lock_store_kwargs, run_id)
    holder.kill()
    began = time.monotonic()
    lock_store.save(lock_store.load(run_id))
    assert time.monotonic() - began < 0.5


def test_a_forked_child_does_not_keep_a_killed_holders_write_lock(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    # A child forked by a writer must not keep a descriptor of the write-lock file open
    # (a descriptor kept between checkpoints, say): the flock lives as long as any
    # descriptor of the open file, so the writer's lock would outlive the writer.
    forked = CTX.Queue()
    holder = Holder(
        spawn, store_workers.fork_then_hold_write_lock, lock_store_kwargs, run_id, forked
    )
    child = forked.get(timeout=START_TIMEOUT)
    try:
        holder.kill()
        lock_store.save(lock_store.load(run_id))  # StateLocked after 0.5 s if kept
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_write_lock_is_reentrant_in_a_thread(lock_store: JSONFileStore, run_id: str) -> None:
    with lock_store.write_lock(run_id), lock_store.write_lock(run_id):
        state = lock_store.load(run_id)
        lock_store.save(state)  # save takes the lock again: no deadlock
    assert lock_store.load(run_id).revision == 2


def _other_thread_can_save(store: JSONFileStore, run_id: str) -> bool:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            store.save(store.load(run_id))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    return not errors


def test_nested_write_lock_is_held_until_the_outermost_exit(
    lock_store: JSONFileStore, run_id: str
) -> None:
    with lock_store.write_lock(run_id):
        with lock_store.write_lock(run_id):
            pass
        assert not _other_thread_can_save(lock_store, run_id)
    assert _other_thread_can_save(lock_store, run_id)
    same = lock_store.write_lock(run_id)
    with same:
        with same:  # one lock object entered twice
            pass
        assert not _other_thread_can_save(lock_store, run_id)
    assert _other_thread_can_save(lock_store, run_id)


def test_write_lock_excludes_another_thread(lock_store: JSONFileStore, run_id: str) -> None:
    errors: list[BaseException] = []

    def other() -> None:
        try:
            lock_store.save(lock_store.load(run_id))
        except BaseException as exc:
            errors.append(exc)

    with lock_store.write_lock(run_id):
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1
    assert isinstance(errors[0], StateLocked)


# --- lost updates -------------------------------------------------------------------------


def _run_incrementers(
    spawn: Any,
    kwargs: dict[str, Any],
    run_id: str,
    processes: int,
    times: int,
    locked: bool,
    race_window: float = 0.0,
) -> None:
    start = CTX.Barrier(processes)
    procs = [
        spawn(store_workers.increment, kwargs, run_id, times, locked, start, race_window)
        for _ in range(processes)
    ]
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0


@pytest.mark.slow
def test_no_lost_updates_4_processes_x_300(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    kwargs = {**lock_store_kwargs, "lock_timeout": 60.0}
    _run_incrementers(spawn, kwargs, run_id, processes=4, times=300, locked=True)
    final = lock_store.load(run_id)
    assert final.inputs["counter"] == 1200
    assert final.revision == 1 + 1200  # one revision per save, none skipped or repeated


def test_control_unlocked_increments_lose_updates(
    lock_store: JSONFileStore, lock_store_kwargs: dict[str, Any], run_id: str, spawn: Any
) -> None:
    # The same increments with the read outside the lock, and the race window widened:
    # proves the test above would see a lost update if the lock did not prevent it.
    kwargs = {**lock_store_kwargs, "lock_timeout": 60.0}
    _run_incrementers(spawn, kwargs, run_id, processes=4, times=25, locked=False, race_window=0.005)
    assert lock_store.load(run_id).inputs["counter"] < 100


def test_dead_owner_info_is_not_blamed_while_a_prober_holds_the_lock(
    lock_backend: str, lock_store: JSONFileStore, run_id: str, spawn: Any
) -> None:
    if lock_backend != "file":
        pytest.skip("the owner info inside the lock file is the file backend's")
    # A SIGKILLed executor left its info behind; a prober (run_lock_owner, from another
    # process) holds the lock for a moment when a new executor arrives. The executor
    # must not report the dead process as the one executing the run.
    dead = spawn(os.getpid)
    dead.join(10)
    lock_file = lock_store.directory / f"{run_id}.run.lock"
    lock_file.write_bytes(
        b'{"pid": %d, "host": "%s", "since": "2026-01-01T00:00:00Z"}'
        % (dead.pid, socket.gethostname().encode())
    )
    with open(lock_file, "r+b") as prober:
        import portalocker

        portalocker.lock(prober, portalocker.LockFlags.EXCLUSIVE)
        with pytest.raises(RunLocked) as info, lock_store.run_lock(run_id):
            pass
        assert f"pid {dead.pid}" not in str(info.value)
        # Held, by nobody it can name (pid 0): not the dead process, not "free".
        assert lock_store.run_lock_owner(run_id) == {"pid": 0, "host": "", "since": ""}
        portalocker.unlock(prober)
    with lock_store.run_lock(run_id) as me:
        assert me["pid"] == os.getpid()
