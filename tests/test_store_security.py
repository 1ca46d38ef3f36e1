"""Hostile input: bad ids, planted symlinks, odd umasks and corrupt files.

Nothing outside the storage directory may be touched (a canary file's bytes and mtime
are compared), ids are refused before any path is built, files come out 0600 and
directories 0700 whatever the umask, and every kind of corrupt file raises
``CorruptState`` naming the file, which is left exactly as it was.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wfstate.exceptions import CorruptState, InvalidRunId, RunNotFound, StorageError
from wfstate.state import WorkflowState, new_workflow_id
from wfstate.stores import JSONFileStore, MemoryStore

# --- a canary outside the storage directory ----------------------------------------------


class Canary:
    """A file outside the storage directory, whose bytes and mtime must never change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"do not touch\n")
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        self.snapshot = self._snapshot()

    def _snapshot(self) -> tuple[bytes, int, int]:
        st = os.stat(self.path)
        return self.path.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode)

    def assert_untouched(self) -> None:
        assert self.path.exists()
        assert self._snapshot() == self.snapshot


@pytest.fixture
def canary(tmp_path: Path) -> Canary:
    return Canary(tmp_path / "outside" / "canary")


@pytest.fixture
def etc_passwd() -> Iterator[None]:
    """/etc/passwd unchanged by whatever the test did (it is only ever read here)."""
    path = Path("/etc/passwd")
    before = (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
    yield
    after = (path.read_bytes(), path.stat().st_mtime_ns) if path.exists() else None
    assert after == before


# --- ids --------------------------------------------------------------------------------

BAD_IDS = [
    "../x",
    "../../outside/canary",
    "/etc/passwd",
    "a\0b",
    "x" * 300,
    "not-a-uuid",
    "",
    ".",
    "..",
    "3f6c1e0a-9b1d-1c1e-8f5e-2d7a0c9b4e11",  # a UUID, but version 1
    "3F6C1E0A-9B1D-4C1E-8F5E-2D7A0C9B4E11",  # upper case: not the canonical form
    "3f6c1e0a-9b1d-4c1e-8f5e-2d7a0c9b4e11\n",
    "3f6c1e0a-9b1d-4c1e-8f5e-2d7a0c9b4e11/../../x",
    " 3f6c1e0a-9b1d-4c1e-8f5e-2d7a0c9b4e11",
    None,
    42,
]


def _calls(store: Any, bad: Any) -> dict[str, Callable[[], Any]]:
    return {
        "load": lambda: store.load(bad),
        "save": lambda: store.save(WorkflowState(workflow_id=bad, workflow_name="x")),
        "delete": lambda: store.delete(bad),
        "exists": lambda: store.exists(bad),
        "update": lambda: store.update(bad, lambda s: None),
        "write_lock": lambda: store.write_lock(bad).__enter__(),
        "run_lock": lambda: store.run_lock(bad).__enter__(),
        "run_lock_owner": lambda: store.run_lock_owner(bad),
        "request_cancel": lambda: store.request_cancel(bad),
        "cancel_requested": lambda: store.cancel_requested(bad),
        "clear_cancel": lambda: store.clear_cancel(bad),
        "save_output": lambda: store.save_output(bad, "build", "stdout", b"x"),
        "load_output": lambda: store.load_output(bad, "build", "stdout"),
    }


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
@pytest.mark.usefixtures("etc_passwd")
def test_bad_ids_are_refused_before_any_path_is_built(
    store: JSONFileStore, canary: Canary, bad: Any
) -> None:
    for name, call in _calls(store, bad).items():
        with pytest.raises(InvalidRunId):
            call()
        canary.assert_untouched()
        assert not store.root.exists(), f"{name} created the storage directory"
    with pytest.raises(InvalidRunId):
        store.path_for(bad)
    canary.assert_untouched()


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_memory_store_refuses_bad_ids_too(bad: Any) -> None:
    store = MemoryStore()
    for call in _calls(store, bad).values():
        with pytest.raises(InvalidRunId):
            call()


def test_invalid_run_id_is_a_run_not_found_and_cut_short(store: JSONFileStore) -> None:
    with pytest.raises(RunNotFound) as info:
        store.load("y" * 300)
    assert isinstance(info.value, ValueError)
    assert info.value.code == "invalid_run_id"
    assert len(str(info.value)) < 150


# --- planted symlinks -------------------------------------------------------------------


@pytest.fixture
def planted(store: JSONFileStore) -> str:
    """A run id whose directory exists (a first run saved), for planting links in it."""
    store.save(WorkflowState.new("other"))
    return new_workflow_id()


def test_symlink_at_state_file_is_never_followed(
    store: JSONFileStore, canary: Canary, planted: str
) -> None:
    link = store.path_for(planted)
    link.symlink_to(canary.path)

    with pytest.raises(CorruptState) as info:
        store.load(planted)
    assert str(link) in str(info.value)
    canary.assert_untouched()

    with pytest.raises(StorageError):
        store.save(WorkflowState.new("x", workflow_id=planted))
    canary.assert_untouched()
    assert link.is_symlink()

    with pytest.raises(CorruptState):
        store.update(planted, lambda s: None)
    canary.assert_untouched()

    # delete removes the planted link itself, never what it points at.
    store.delete(planted)
    assert not link.is_symlink()
    canary.assert_untouched()


def test_dangling_symlink_at_state_file(store: JSONFileStore, tmp_path: Path, planted: str) -> None:
    target = tmp_path / "outside" / "created-through-a-link"
    store.path_for(planted).symlink_to(target)
    with pytest.raises(StorageError):
        store.save(WorkflowState.new("x", workflow_id=planted))
    assert not target.exists()


@pytest.mark.parametrize("sidecar", [".lock", ".run.lock"])
def test_symlink_at_lock_file_is_never_followed(
    store: JSONFileStore, canary: Canary, planted: str, sidecar: str
) -> None:
    (store.directory / f"{planted}{sidecar}").symlink_to(canary.path)
    if sidecar == ".lock":
        with pytest.raises(StorageError):
            store.save(WorkflowState.new("x", workflow_id=planted))
    else:
        with pytest.raises(StorageError), store.run_lock(planted):
            pass
        with pytest.raises(StorageError):
            store.run_lock_owner(planted)
    canary.assert_untouched()
    assert not store.path_for(planted).exists()


def test_symlink_at_cancel_marker_is_never_followed(
    store: JSONFileStore, canary: Canary, planted: str
) -> None:
    (store.directory / f"{planted}.cancel").symlink_to(canary.path)
    store.request_cancel(planted)
    canary.assert_untouched()


def test_symlinked_outputs_directory_is_refused(
    store: JSONFileStore, canary: Canary, planted: str
) -> None:
    outside = canary.path.parent
    mode_before = stat.S_IMODE(outside.stat().st_mode)
    store.save(WorkflowState.new("x", workflow_id=planted))
    store.outputs_dir(planted).symlink_to(outside)
    with pytest.raises(StorageError):
        store.save_output(planted, "canary", "stdout", b"overwritten")
    with pytest.raises(StorageError):
        store.load_output(planted, "canary", "stdout")
    store.delete(planted)
    canary.assert_untouched()
    assert sorted(os.listdir(outside)) == ["canary"]
    assert stat.S_IMODE(outside.stat().st_mode) == mode_before


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 200, "a\0b"])
def test_unsafe_output_names_are_refused(store: JSONFileStore, planted: str, name: str) -> None:
    with pytest.raises(ValueError, match="unsafe name"):
        store.save_output(planted, name, "stdout", b"x")
    with pytest.raises(ValueError, match="unsafe name"):
        store.save_output(planted, "build", name, b"x")


# --- modes whatever the umask -------------------------------------------------------------


@pytest.fixture(params=[0o000, 0o022, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def test_files_0600_and_directories_0700(tmp_path: Path, umask: int) -> None:
    store = JSONFileStore(tmp_path / "storage", lock_timeout=0.5)
    state = WorkflowState.new("modes")
    store.save(state)
    with store.run_lock(state.workflow_id):
        pass
    store.request_cancel(state.workflow_id)
    store.save_output(state.workflow_id, "build", "stdout", b"out")

    files = [
        store.path_for(state.workflow_id),
        store.directory / f"{state.workflow_id}.lock",
        store.directory / f"{state.workflow_id}.run.lock",
        store.directory / f"{state.workflow_id}.cancel",
        store.outputs_dir(state.workflow_id) / "build.stdout",
    ]
    directories = [store.root, store.directory, store.outputs_dir(state.workflow_id)]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in directories:
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


# --- corrupt files ------------------------------------------------------------------------

CORRUPT: dict[str, bytes] = {
    "empty": b"",
    "whitespace": b"  \n\t ",
    "truncated": b'{"schema_version": 1, "workflow_id": "',
    "null": b"null",
    "array": b"[1, 2, 3]",
    "string": b'"a state"',
    "number": b"42",
    "invalid utf-8": b'{"workflow_id": "\xff\xfe", "workflow_name": "x"}',
    "utf-16": '{"workflow_id": "x"}'.encode("utf-16"),
    "garbage 10 MB": os.urandom(10 * 1024 * 1024),
    "100,000-deep array": b"[" * 100_000 + b"]" * 100_000,
    "100,000-deep object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep inside a state": b'{"workflow_id": "ID", "workflow_name": "x", "inputs": {"x": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}}",
    "missing keys": b'{"schema_version": 1}',
    "wrong types": b'{"workflow_id": "ID", "workflow_name": "x", "states": [1]}',
    "bad step": b'{"workflow_id": "ID", "workflow_name": "x", "states": {"a": 5}}',
    "bad status": b'{"workflow_id": "ID", "workflow_name": "x", "status": "weird"}',
    "newer schema": b'{"schema_version": 99, "workflow_id": "ID", "workflow_name": "x"}',
    "another run's id": b'{"workflow_id": "OTHER", "workflow_name": "x"}',
    "NaN": b'{"workflow_id": "ID", "workflow_name": "x", "revision": NaN}',
    "trailing garbage": b'{"workflow_id": "ID", "workflow_name": "x"} trailing',
}


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_file_raises_corrupt_state_naming_it(store: JSONFileStore, kind: str) -> None:
    workflow_id = new_workflow_id()
    store.save(WorkflowState.new("x", workflow_id=workflow_id))
    path = store.path_for(workflow_id)
    data = CORRUPT[kind].replace(b'"ID"', f'"{workflow_id}"'.encode())
    data = data.replace(b'"OTHER"', f'"{new_workflow_id()}"'.encode())
    path.write_bytes(data)
    mtime = path.stat().st_mtime_ns

    for attempt in (
        lambda: store.load(workflow_id),
        lambda: store.update(workflow_id, lambda s: None),
    ):
        with pytest.raises(CorruptState) as info:
            attempt()
        assert str(path) in str(info.value)
        assert info.value.path == str(path)
        assert info.value.code == "corrupt_state"
        assert not isinstance(info.value.__cause__, RecursionError)
        assert not isinstance(info.value.__context__, RecursionError)
    assert path.read_bytes() == data
    assert path.stat().st_mtime_ns == mtime

    # Listed like any run, and reported (not raised) by iter_states.
    assert workflow_id in store.list()
    errors = dict(store.iter_states())
    assert isinstance(errors[workflow_id], CorruptState)


def test_file_over_max_bytes_is_corrupt_not_parsed(tmp_path: Path) -> None:
    # Written by a store with a larger limit (or by hand): this one reports it corrupt.
    state = WorkflowState.new("big", inputs={"x": "y" * 2000})
    JSONFileStore(tmp_path / "storage").save(state)
    store = JSONFileStore(tmp_path / "storage", max_bytes=1000)
    with pytest.raises(CorruptState, match="1000"):
        store.load(state.workflow_id)


def test_a_directory_at_the_state_path(store: JSONFileStore) -> None:
    workflow_id = new_workflow_id()
    store.save(WorkflowState.new("x"))
    path = store.path_for(workflow_id)
    path.mkdir()
    with pytest.raises(CorruptState, match="not a regular file") as info:
        store.load(workflow_id)
    assert info.value.path == str(path)
    with pytest.raises(StorageError):
        store.save(WorkflowState.new("x", workflow_id=workflow_id))
    assert path.is_dir()
    assert store.temp_files() == []
