"""Faults in the middle of a save: the caller gets a StorageError, the previous file is
byte-for-byte intact, no temp (or backup) file is left, and the next save succeeds.

The faults are injected where the operating system would report them (``os.fsync``,
``os.replace``, the directory fsync, ``os.write``); a real ENOSPC comes from a tiny
tmpfs when the tests run as root.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import mounted_tmpfs
from wfstate.exceptions import DiskFull, RunNotFound, StorageError, WFStateError
from wfstate.state import StepResult, StepStatus, WorkflowState
from wfstate.stores import JSONFileStore, _atomic
from wfstate.stores._serialize import serialize, serialize_parts


def _fail(err: int = errno.EIO) -> Callable[..., Any]:
    def raiser(*args: Any, **kwargs: Any) -> Any:
        raise OSError(err, os.strerror(err))

    return raiser


def _saved(store: JSONFileStore, size: int = 5000) -> tuple[WorkflowState, bytes]:
    state = WorkflowState.new("faults", inputs={"payload": "x" * size})
    store.save(state)
    return state, store.path_for(state.workflow_id).read_bytes()


def _leftovers(store: JSONFileStore) -> list[str]:
    """Temp and backup files in the states directory (both are hidden ``.*.tmp`` names)."""
    return sorted(name for name in os.listdir(store.directory) if name.startswith("."))


def _fsync_fails_for_directories(real_fsync: Callable[[int], None]) -> Callable[[int], None]:
    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "injected: directory fsync failed")
        real_fsync(fd)

    return fsync


FAULTS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "fsync of the temp file": lambda mp: mp.setattr(_atomic.os, "fsync", _fail()),
    "write (EIO)": lambda mp: mp.setattr(_atomic.os, "write", _fail()),
    "write (ENOSPC)": lambda mp: mp.setattr(_atomic.os, "write", _fail(errno.ENOSPC)),
    "hard link of the backup": lambda mp: mp.setattr(_atomic.os, "link", _fail(errno.EMLINK)),
    "os.replace": lambda mp: mp.setattr(_atomic.os, "replace", _fail()),
    "directory fsync": lambda mp: mp.setattr(_atomic, "fsync_dir", _fail()),
    "fsync of the directory fd": lambda mp: mp.setattr(
        _atomic.os, "fsync", _fsync_fails_for_directories(os.fsync)
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_fault_leaves_previous_file_intact(store: JSONFileStore, fault: str) -> None:
    state, before = _saved(store)
    path = store.path_for(state.workflow_id)
    state.inputs["payload"] = "y" * 7000
    with pytest.MonkeyPatch.context() as mp:
        FAULTS[fault](mp)
        with pytest.raises(StorageError) as info:
            store.save(state)
    assert isinstance(info.value, WFStateError)
    assert isinstance(info.value, OSError)
    assert str(path) in str(info.value)
    if "ENOSPC" in fault:
        assert isinstance(info.value, DiskFull)
        assert info.value.code == "disk_full"
    assert path.read_bytes() == before
    assert _leftovers(store) == []
    assert store.temp_files() == []
    # The failed save did not count: the next one writes the revision after the file's.
    assert state.revision == 1
    store.save(state)
    again = store.load(state.workflow_id)
    assert again.revision == 2
    assert again.inputs["payload"] == "y" * 7000
    assert _leftovers(store) == []


@pytest.mark.parametrize("fault", ["os.replace", "directory fsync", "fsync of the temp file"])
def test_fault_on_first_save_leaves_no_file(store: JSONFileStore, fault: str) -> None:
    state = WorkflowState.new("faults")
    with pytest.MonkeyPatch.context() as mp:
        FAULTS[fault](mp)
        with pytest.raises(StorageError):
            store.save(state)
    # A save that failed did not happen: no half-made run, no temp file.
    with pytest.raises(RunNotFound):
        store.load(state.workflow_id)
    assert _leftovers(store) == []
    store.save(state)
    assert store.load(state.workflow_id).revision == 1


def test_fault_in_save_output_keeps_previous_output(store: JSONFileStore) -> None:
    state, _ = _saved(store)
    store.save_output(state.workflow_id, "build", "stdout", b"first")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_atomic, "fsync_dir", _fail())
        with pytest.raises(StorageError):
            store.save_output(state.workflow_id, "build", "stdout", b"second")
    assert store.load_output(state.workflow_id, "build", "stdout") == b"first"
    assert store.temp_files() == []


def test_durable_false_skips_fsyncs_but_stays_atomic(store: JSONFileStore) -> None:
    state, _ = _saved(store)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_atomic.os, "fsync", _fail())
        mp.setattr(_atomic, "fsync_dir", _fail())
        store.save(state, durable=False)  # no fsync called, so none can fail
    assert store.load(state.workflow_id).revision == 2
    assert _leftovers(store) == []


# --- a real ENOSPC ----------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs, when this process may mount one."""
    if os.geteuid() != 0:
        pytest.skip("a real ENOSPC needs root, to mount a 64 KiB tmpfs")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    with mounted_tmpfs(mount_point, "size=64k,mode=0700", "mounting a tmpfs is not permitted here"):
        yield mount_point


def test_real_disk_full(tiny_disk: Path) -> None:
    store = JSONFileStore(tiny_disk / "storage", lock_timeout=0.5)
    state, before = _saved(store, size=20_000)
    path = store.path_for(state.workflow_id)
    filler = tiny_disk / "filler"
    filler.write_bytes(b"f" * 30_000)

    state.inputs["payload"] = "z" * 40_000
    with pytest.raises(DiskFull) as info:
        store.save(state)
    assert isinstance(info.value, StorageError)
    assert info.value.code == "disk_full"
    assert path.read_bytes() == before
    assert store.temp_files() == []
    assert _leftovers(store) == []
    assert state.revision == 1

    filler.unlink()
    state.inputs["payload"] = "s" * 30_000
    store.save(state)
    loaded = store.load(state.workflow_id)
    assert loaded.revision == 2
    assert loaded.inputs["payload"] == "s" * 30_000
    assert _leftovers(store) == []


# --- a big state, written in pieces -----------------------------------------------------


def _big_saved(store: JSONFileStore) -> tuple[WorkflowState, bytes]:
    """A state big enough for its finished steps' bytes to be written as a piece of
    their own (``serialize_parts``), saved twice so that the second save spliced."""
    state = WorkflowState.new("faults")
    for i in range(40):
        state.states[f"step{i}"] = StepResult(
            name=f"step{i}", status=StepStatus.COMPLETED, output=f"line {i}\n" * 300
        )
    store.save(state)
    store.save(state)
    assert len(serialize_parts(state)) > 1  # the control: these saves do write pieces
    return state, store.path_for(state.workflow_id).read_bytes()


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_fault_in_a_pieced_write_leaves_previous_file_intact(
    store: JSONFileStore, err: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, before = _big_saved(store)
    path = store.path_for(state.workflow_id)
    state.states["step3"].output = "changed\n"
    calls: list[int] = []

    def writev(fd: int, buffers: Any) -> int:
        calls.append(len(buffers))
        raise OSError(err, os.strerror(err))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_atomic.os, "writev", writev)
        with pytest.raises(DiskFull if err == errno.ENOSPC else StorageError):
            store.save(state)
    assert calls and calls[0] > 1
    assert path.read_bytes() == before
    assert _leftovers(store) == []
    store.save(state)
    assert store.load(state.workflow_id).states["step3"].output == "changed\n"
    assert path.read_bytes() == serialize(state)


def test_a_short_pieced_write_is_completed(store: JSONFileStore) -> None:
    state, _ = _big_saved(store)
    real = os.writev
    short: list[int] = []

    def writev(fd: int, buffers: Any) -> int:
        # What a signal or a nearly full disk may do: write part of the first piece.
        written = real(fd, [bytes(buffers[0][:100])])
        short.append(written)
        return written

    state.states["in_flight"] = StepResult(name="in_flight", status=StepStatus.RUNNING)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_atomic.os, "writev", writev)
        store.save(state)
    assert short == [100]
    assert store.path_for(state.workflow_id).read_bytes() == serialize(state)
    assert store.load(state.workflow_id).states["in_flight"].status == StepStatus.RUNNING
