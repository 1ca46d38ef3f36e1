"""The StateStore port: the same cases against JSONFileStore and MemoryStore, then what
only the file store has (its layout on disk, temp-file sweeping)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from wfstate.exceptions import CorruptState, RunNotFound, StillRunning
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, new_workflow_id
from wfstate.stores import JSONFileStore, MemoryStore, StateStore
from wfstate.stores._atomic import temp_name


@pytest.fixture(params=["json", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "json":
        return JSONFileStore(tmp_path / "storage", lock_timeout=0.5)
    return MemoryStore(lock_timeout=0.5)


def new_state(**inputs: object) -> WorkflowState:
    return WorkflowState.new("demo", inputs=dict(inputs), workflow_version="1")


# --- shared cases ---------------------------------------------------------------------------


def test_save_then_load(any_store: StateStore) -> None:
    state = new_state(tag="v1")
    state.states["build"] = StepResult(name="build", status=StepStatus.COMPLETED, output="ok")
    any_store.save(state)
    loaded = any_store.load(state.workflow_id)
    assert loaded.to_dict() == state.to_dict()
    assert loaded is not state
    loaded.inputs["tag"] = "changed"  # no aliasing between what was saved and loaded
    assert any_store.load(state.workflow_id).inputs["tag"] == "v1"


def test_revision_increases_by_one_per_save(any_store: StateStore) -> None:
    state = new_state()
    assert state.revision == 0
    seen = []
    for _ in range(5):
        before = state.updated_at
        any_store.save(state)
        seen.append(any_store.load(state.workflow_id).revision)
        assert state.updated_at >= before
    assert seen == [1, 2, 3, 4, 5]
    assert state.revision == 5


def test_load_missing(any_store: StateStore) -> None:
    with pytest.raises(RunNotFound) as info:
        any_store.load(new_workflow_id())
    assert isinstance(info.value, LookupError)
    assert info.value.code == "run_not_found"


def test_exists_and_list(any_store: StateStore) -> None:
    assert any_store.list() == []
    states = [new_state() for _ in range(3)]
    for state in states:
        any_store.save(state)
    assert any_store.list() == sorted(s.workflow_id for s in states)
    assert all(any_store.exists(s.workflow_id) for s in states)
    assert not any_store.exists(new_workflow_id())


def test_delete(any_store: StateStore) -> None:
    state = new_state()
    any_store.save(state)
    any_store.save_output(state.workflow_id, "build", "stdout", b"x" * 100)
    any_store.request_cancel(state.workflow_id)
    any_store.delete(state.workflow_id)
    assert not any_store.exists(state.workflow_id)
    assert any_store.list() == []
    with pytest.raises(RunNotFound):
        any_store.load_output(state.workflow_id, "build", "stdout")
    assert not any_store.cancel_requested(state.workflow_id)
    with pytest.raises(RunNotFound):
        any_store.delete(state.workflow_id)


def test_delete_refused_while_run_locked(any_store: StateStore) -> None:
    state = new_state()
    any_store.save(state)
    with any_store.run_lock(state.workflow_id):
        with pytest.raises(StillRunning, match=f"pid {os.getpid()}"):
            any_store.delete(state.workflow_id)
        assert any_store.exists(state.workflow_id)
    any_store.delete(state.workflow_id)
    assert not any_store.exists(state.workflow_id)


def test_outputs_side_files(any_store: StateStore) -> None:
    state = new_state()
    any_store.save(state)
    big = os.urandom(200_000)
    where = any_store.save_output(state.workflow_id, "build", "stdout", big)
    assert "build.stdout" in where
    any_store.save_output(state.workflow_id, "build", "stderr", b"err")
    assert any_store.load_output(state.workflow_id, "build", "stdout") == big
    assert any_store.load_output(state.workflow_id, "build", "stderr") == b"err"
    any_store.save_output(state.workflow_id, "build", "stdout", b"replaced")
    assert any_store.load_output(state.workflow_id, "build", "stdout") == b"replaced"
    with pytest.raises(RunNotFound):
        any_store.load_output(state.workflow_id, "test", "stdout")


def test_cancel_markers(any_store: StateStore) -> None:
    state = new_state()
    any_store.save(state)
    assert not any_store.cancel_requested(state.workflow_id)
    any_store.request_cancel(state.workflow_id)
    any_store.request_cancel(state.workflow_id)  # idempotent
    assert any_store.cancel_requested(state.workflow_id)
    any_store.clear_cancel(state.workflow_id)
    any_store.clear_cancel(state.workflow_id)  # idempotent
    assert not any_store.cancel_requested(state.workflow_id)


def test_update_is_a_locked_read_modify_write(any_store: StateStore) -> None:
    state = new_state(counter=0)
    any_store.save(state)

    def bump(s: WorkflowState) -> None:
        s.inputs["counter"] += 1
        s.status = RunStatus.RUNNING

    result = any_store.update(state.workflow_id, bump)
    assert result.inputs["counter"] == 1
    assert result.revision == 2
    loaded = any_store.load(state.workflow_id)
    assert loaded.inputs["counter"] == 1
    assert loaded.status is RunStatus.RUNNING
    with pytest.raises(RunNotFound):
        any_store.update(new_workflow_id(), bump)


def test_update_from_threads_loses_nothing(any_store: StateStore) -> None:
    state = new_state(counter=0)
    any_store.save(state)

    def bump(s: WorkflowState) -> None:
        s.inputs["counter"] += 1

    def work() -> None:
        for _ in range(25):
            any_store.update(state.workflow_id, bump, durable=False)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any_store.load(state.workflow_id).inputs["counter"] == 100


def test_run_lock_records_the_owner(any_store: StateStore) -> None:
    state = new_state()
    any_store.save(state)
    assert any_store.run_lock_owner(state.workflow_id) is None
    with any_store.run_lock(state.workflow_id) as owner:
        assert owner["pid"] == os.getpid()
        assert any_store.run_lock_owner(state.workflow_id) == owner
        with any_store.write_lock(state.workflow_id):  # run lock, then write lock
            any_store.save(state)
    assert any_store.run_lock_owner(state.workflow_id) is None


def test_iter_states(any_store: StateStore) -> None:
    states = [new_state(i=i) for i in range(3)]
    for state in states:
        any_store.save(state)
    got = dict(any_store.iter_states())
    assert set(got) == {s.workflow_id for s in states}
    assert all(isinstance(v, WorkflowState) for v in got.values())


# --- the file store only ----------------------------------------------------------------------


def test_file_layout(store: JSONFileStore) -> None:
    state = new_state(tag="v1")
    store.save(state)
    path = store.path_for(state.workflow_id)
    assert path == store.root / "states" / f"{state.workflow_id}.json"
    assert store.directory == store.root / "states"
    document = json.loads(path.read_bytes())
    assert document["workflow_id"] == state.workflow_id
    assert document["revision"] == 1
    assert path.read_bytes().startswith(b'{\n  "schema_version": 2,\n')
    with store.run_lock(state.workflow_id):
        pass
    store.request_cancel(state.workflow_id)
    store.save_output(state.workflow_id, "build", "stdout", b"x")
    assert sorted(os.listdir(store.directory)) == sorted(
        f"{state.workflow_id}{suffix}"
        for suffix in (".json", ".lock", ".run.lock", ".cancel", ".outputs")
    )
    store.delete(state.workflow_id)
    assert os.listdir(store.directory) == []  # sidecars go with the run


def test_file_store_reads_what_another_instance_wrote(tmp_path: Path) -> None:
    one = JSONFileStore(tmp_path / "storage")
    two = JSONFileStore(tmp_path / "storage")
    state = new_state()
    one.save(state)
    assert two.load(state.workflow_id).to_dict() == state.to_dict()


def test_list_ignores_foreign_files(store: JSONFileStore) -> None:
    state = new_state()
    store.save(state)
    for name in ("notes.json", ".hidden.json", "README", f"{state.workflow_id}.json.bak"):
        (store.directory / name).write_text("{}")
    assert store.list() == [state.workflow_id]


def test_corrupt_file_is_reported_by_iter_states(store: JSONFileStore) -> None:
    good, bad = new_state(), new_state()
    store.save(good)
    store.save(bad)
    store.path_for(bad.workflow_id).write_bytes(b"{")
    got = dict(store.iter_states())
    assert isinstance(got[good.workflow_id], WorkflowState)
    assert isinstance(got[bad.workflow_id], CorruptState)


def test_sweep_removes_only_leftover_temp_files(store: JSONFileStore) -> None:
    state = new_state()
    store.save(state)
    store.save_output(state.workflow_id, "build", "stdout", b"x")
    path = store.path_for(state.workflow_id)
    leftovers = [
        temp_name(path),
        temp_name(path),  # e.g. a backup link left by a power cut
        temp_name(store.outputs_dir(state.workflow_id) / "build.stdout"),
    ]
    for leftover in leftovers:
        leftover.write_bytes(b"half a write")
    foreign = [
        store.directory / ".hidden",
        store.directory / "notes.tmp",
        store.directory / f".{state.workflow_id}.json.short.tmp",  # not our token length
        store.directory / ".tmp",
    ]
    for other in foreign:
        other.write_bytes(b"not ours")
    assert store.temp_files() == sorted(leftovers)

    removed = store.sweep()
    assert sorted(removed) == sorted(str(p) for p in leftovers)
    assert store.temp_files() == []
    assert all(p.exists() for p in foreign)
    assert store.load(state.workflow_id).revision == 1


def test_sweep_leaves_a_write_in_progress(store: JSONFileStore) -> None:
    state = new_state()
    store.save(state)
    in_progress = temp_name(store.path_for(state.workflow_id))
    with store.write_lock(state.workflow_id):
        in_progress.write_bytes(b"being written")
        # From another thread (another lock holder): the run is busy, so it is skipped.
        removed: list[str] = []
        t = threading.Thread(target=lambda: removed.extend(store.sweep()))
        t.start()
        t.join()
        assert removed == []
        assert in_progress.exists()
    assert store.sweep() == [str(in_progress)]


def test_sweep_on_a_missing_directory(tmp_path: Path) -> None:
    store = JSONFileStore(tmp_path / "nowhere")
    assert store.temp_files() == []
    assert store.sweep() == []
    assert store.list() == []
    assert not (tmp_path / "nowhere").exists()


def test_memory_store_sweep_is_a_no_op() -> None:
    assert MemoryStore().sweep() == []


def test_get_store_follows_settings(wfstate_settings: dict[str, object], settings: object) -> None:
    from wfstate.stores import get_store

    store = get_store()
    assert isinstance(store, JSONFileStore)
    assert store.root == wfstate_settings["STORAGE_DIR"]
    assert get_store() is store
    settings.WFSTATE = {  # type: ignore[attr-defined]
        **wfstate_settings,
        "STORE": {"BACKEND": "wfstate.stores.MemoryStore"},
    }
    assert isinstance(get_store(), MemoryStore)
