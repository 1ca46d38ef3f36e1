"""The StateStore port: the same cases against JSONFileStore, MemoryStore and
tests/contract_store.py (a store written from the documented contract alone), then
what only the file store has (its layout on disk, temp-file sweeping)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from tests.contract_store import ContractStore
from wfstate.exceptions import (
    CorruptState,
    RunNotFound,
    StateTooLarge,
    StillRunning,
    StorageError,
)
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, new_workflow_id
from wfstate.stores import (
    JSONFileStore,
    MemoryStore,
    StateStore,
    store_options,
    store_options_error,
)
from wfstate.stores._atomic import temp_name
from wfstate.stores._serialize import FIRST_READ_BYTES

STORES = ["json", "memory", "contract"]


def make_store(kind: str, tmp_path: Path, **options: object) -> StateStore:
    # A generous lock timeout: four threads taking turns on a busy machine must not
    # starve (the timeout itself is tested in tests/test_store_locks.py).
    if kind == "json":
        return JSONFileStore(tmp_path / "storage", lock_timeout=10, **options)  # type: ignore[arg-type]
    if kind == "contract":
        return ContractStore(tmp_path / "storage", lock_timeout=10, **options)  # type: ignore[arg-type]
    return MemoryStore(lock_timeout=10, **options)  # type: ignore[arg-type]


@pytest.fixture(params=STORES)
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    return make_store(request.param, tmp_path)


def footprint(store: StateStore, tmp_path: Path) -> list[str]:
    """Every file and directory the store keeps (nothing for the memory store)."""
    root = tmp_path / "storage"
    if isinstance(store, MemoryStore) or not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


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


@pytest.mark.parametrize("kind", STORES)
def test_save_refuses_a_state_over_max_bytes_before_writing(kind: str, tmp_path: Path) -> None:
    store = make_store(kind, tmp_path, max_bytes=4000)
    state = new_state(tag="small")
    store.save(state)
    before = footprint(store, tmp_path)
    state.inputs["tag"] = "x" * 5000
    with pytest.raises(StateTooLarge) as info:
        store.save(state)
    assert info.value.code == "state_too_large"
    assert info.value.limit == 4000 and info.value.size > 4000
    assert state.workflow_id in str(info.value) and "4000" in str(info.value)
    assert state.revision == 1  # the in-memory state does not claim the save
    # Nothing written: the stored state is the previous one, and readable.
    assert store.load(state.workflow_id).inputs["tag"] == "small"
    assert footprint(store, tmp_path) == before
    # A run whose first save is too big never exists.
    big = new_state(tag="y" * 5000)
    with pytest.raises(StateTooLarge):
        store.save(big)
    assert not store.exists(big.workflow_id)
    assert store.list() == [state.workflow_id]


def test_run_lock_of_an_unknown_run_keeps_nothing(any_store: StateStore, tmp_path: Path) -> None:
    unknown = new_workflow_id()
    with any_store.run_lock(unknown) as owner:
        assert owner["pid"] == os.getpid()
    assert footprint(any_store, tmp_path) == []
    assert any_store.run_lock_owner(unknown) is None
    assert footprint(any_store, tmp_path) == []  # probing creates nothing either


def test_update_of_an_unknown_run_keeps_nothing(any_store: StateStore, tmp_path: Path) -> None:
    with pytest.raises(RunNotFound):
        any_store.update(new_workflow_id(), lambda s: None)
    assert footprint(any_store, tmp_path) == []


def test_a_run_lock_released_after_its_run_was_deleted_keeps_nothing(
    any_store: StateStore, tmp_path: Path
) -> None:
    state = new_state()
    any_store.save(state)
    with any_store.run_lock(state.workflow_id):
        pass
    any_store.delete(state.workflow_id)
    assert footprint(any_store, tmp_path) == []
    with any_store.run_lock(state.workflow_id):  # a late task for the deleted run
        pass
    assert footprint(any_store, tmp_path) == []


@pytest.mark.parametrize("kind", ["json", "contract"])
def test_quarantine_moves_the_run_aside_with_everything_kept_for_it(
    kind: str, tmp_path: Path
) -> None:
    store = make_store(kind, tmp_path)
    good, bad = new_state(), new_state()
    for state in (good, bad):
        store.save(state)
        with store.run_lock(state.workflow_id):
            pass
    store.save_output(bad.workflow_id, "build", "stdout", b"whole output")
    store.request_cancel(bad.workflow_id)
    path = store.path_for(bad.workflow_id)
    assert path is not None
    assert store.quarantine(bad.workflow_id) is None  # not corrupt: stays
    path.write_bytes(b"{")
    moved = store.quarantine(bad.workflow_id)
    assert moved is not None
    assert Path(moved).read_bytes() == b"{"  # never deleted
    assert store.list() == [good.workflow_id]
    assert not store.exists(bad.workflow_id)
    assert not store.cancel_requested(bad.workflow_id)
    left = [name for name in footprint(store, tmp_path) if bad.workflow_id in name]
    assert all("quarantine" in name for name in left), left
    assert store.quarantine(bad.workflow_id) is None  # gone: nothing to do
    assert store.load(good.workflow_id).revision == 1


def test_the_contract_defaults_are_safe(tmp_path: Path) -> None:
    """MemoryStore overrides none of the optional methods but raw_reader."""
    store = MemoryStore()
    state = new_state()
    store.save(state)
    assert ContractStore(tmp_path, raw_reads=False).raw_reader() is None  # the default
    assert store.path_for(state.workflow_id) is None
    assert store.outputs_dir(state.workflow_id) is None
    assert store.temp_files() == []
    assert store.sweep() == []
    assert store.quarantine(state.workflow_id) is None
    assert store.exists(state.workflow_id)


@pytest.mark.parametrize("kind", STORES)
def test_raw_reader_gives_the_stored_document_or_none(kind: str, tmp_path: Path) -> None:
    store = make_store(kind, tmp_path)
    state = new_state(tag="v1")
    store.save(state)
    reader = store.raw_reader()
    assert reader is not None
    assert json.loads(reader(state.workflow_id) or b"")["inputs"] == {"tag": "v1"}
    assert reader(new_workflow_id()) is None
    assert reader("../etc/passwd") is None


def test_file_raw_reader_reads_large_files_whole_and_refuses_odd_ones(tmp_path: Path) -> None:
    """A file read in one short read, one larger than the first read (read again with
    its size), one over ``max_bytes`` either way, a directory and a FIFO under a state
    file's name (None, at once: a FIFO must not block a sync)."""
    store = JSONFileStore(tmp_path / "storage", max_bytes=1_000_000)
    reader = store.raw_reader()
    small, large = new_state(tag="v1"), new_state(blob="x" * (FIRST_READ_BYTES * 3))
    for state in (small, large):
        store.save(state)
        path = store.directory / f"{state.workflow_id}.json"
        assert reader(state.workflow_id) == path.read_bytes()
    assert len(reader(large.workflow_id) or b"") > FIRST_READ_BYTES * 3
    # max_bytes below and above the first read: both refuse what is over.
    for limit, state in ((100, small), (FIRST_READ_BYTES + 10, large)):
        limited = JSONFileStore(tmp_path / "storage", max_bytes=limit).raw_reader()
        assert limited(state.workflow_id) is None
    odd = new_workflow_id()
    (store.directory / f"{odd}.json").mkdir()
    assert reader(odd) is None
    fifo = new_workflow_id()
    os.mkfifo(store.directory / f"{fifo}.json")
    assert not reader(fifo)  # read as empty: not a state, sync hands it to load()
    with pytest.raises(CorruptState, match="not a regular file"):
        store.load(fifo)  # ... which refuses it at once


def test_file_store_reads_of_side_files_never_wait_on_a_fifo(tmp_path: Path) -> None:
    """A FIFO under a step output's or a loop log's name is refused or read as empty at
    once (opened without O_NONBLOCK, each read waited for a writer forever)."""
    store = JSONFileStore(tmp_path / "storage")
    state = new_state()
    store.save(state)
    store.save_output(state.workflow_id, "build", "stdout", b"ok\n")
    output = store.outputs_dir(state.workflow_id) / "build.stderr"
    os.mkfifo(output)
    with pytest.raises(StorageError, match="not a regular file"):
        store.load_output(state.workflow_id, "build", "stderr")
    store.append_records(state.workflow_id, "items", b"record\n")
    log = store.loops_dir(state.workflow_id) / "other.log"
    os.mkfifo(log)
    assert store.read_records(state.workflow_id, "other") == b""


# --- options from the settings -------------------------------------------------------------


def test_store_options_give_each_backend_only_what_it_takes(settings: object) -> None:
    base = {**settings.WFSTATE, "LOCK_BACKEND": "file", "FILE_MODE": 0o640}  # type: ignore[attr-defined]
    settings.WFSTATE = {**base, "STORE": {"OPTIONS": {"max_bytes": 1234}}}  # type: ignore[attr-defined]
    options = store_options(JSONFileStore)
    assert options["file_mode"] == 0o640 and options["lock_backend"] == "file"
    assert options["max_bytes"] == 1234 and "lock_options" not in options
    assert options["root"] == base["STORAGE_DIR"]
    # The memory store and third-party stores get STORE["OPTIONS"] (and the settings
    # they declare), nothing else: no catch-all needed in their constructors.
    assert store_options(MemoryStore) == {"max_bytes": 1234}
    MemoryStore(**store_options(MemoryStore))
    assert set(store_options(ContractStore)) == {"root", "lock_timeout", "max_bytes"}
    # Documented aliases: REDIS_URL becomes the file store's lock_options.
    settings.WFSTATE = {  # type: ignore[attr-defined]
        **base,
        "LOCK_BACKEND": "redis",
        "REDIS_URL": "redis://example:6379/2",
    }
    assert store_options(JSONFileStore)["lock_options"] == {"redis_url": "redis://example:6379/2"}
    # ... and STORE["OPTIONS"] wins over any alias.
    settings.WFSTATE = {  # type: ignore[attr-defined]
        **base,
        "STORE": {"OPTIONS": {"lock_timeout": 7, "lock_options": {"redis_url": "redis://x/0"}}},
        "LOCK_BACKEND": "redis",
    }
    options = store_options(JSONFileStore)
    assert options["lock_timeout"] == 7
    assert options["lock_options"] == {"redis_url": "redis://x/0"}


def test_options_a_backend_does_not_take_are_named(settings: object) -> None:
    settings.WFSTATE = {  # type: ignore[attr-defined]
        **settings.WFSTATE,  # type: ignore[attr-defined]
        "STORE": {"BACKEND": "wfstate.stores.MemoryStore", "OPTIONS": {"root": "/x"}},
    }
    problem = store_options_error()
    assert problem is not None
    assert "wfstate.stores.memory.MemoryStore" in problem and "root" in problem
    assert store_options_error(JSONFileStore) is None


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

    settings.WFSTATE = {  # type: ignore[attr-defined]
        **wfstate_settings,
        "STORE": {"BACKEND": "wfstate.stores.JSONFileStore"},  # whatever WFSTATE_TEST_STORE says
    }
    store = get_store()
    assert isinstance(store, JSONFileStore)
    assert store.root == wfstate_settings["STORAGE_DIR"]
    assert get_store() is store
    settings.WFSTATE = {  # type: ignore[attr-defined]
        **wfstate_settings,
        "STORE": {"BACKEND": "wfstate.stores.MemoryStore"},
    }
    assert isinstance(get_store(), MemoryStore)
