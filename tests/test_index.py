"""The index (wfstate.index): projection, upserts, the engine's listener, sync from files."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connections

from tests.helpers import make_state, rows, wait_for
from wfstate import index, runs
from wfstate.exceptions import CorruptState
from wfstate.index import bulk, reader
from wfstate.index import rows as row_writes
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores import get_store

pytestmark = pytest.mark.usefixtures("wfstate_settings")


# --- projection and single-row upserts -------------------------------------------------------


def test_row_fields_projects_the_state() -> None:
    state = make_state(
        "demo",
        RunStatus.FAILED,
        {"greet": StepStatus.COMPLETED, "prepare": StepStatus.FAILED},
    )
    state.revision = 7
    state.error = "x" * 2000
    fields = index.row_fields(state)
    assert fields["workflow_name"] == "demo"
    assert fields["workflow_version"] == "1.0.0"
    assert fields["status"] == "failed"
    assert fields["current_state"] == "prepare"
    assert fields["started_at"].isoformat() == "2026-11-27T11:00:00+00:00"
    assert fields["completed_at"].isoformat() == "2026-11-27T11:00:30+00:00"
    assert fields["duration_ms"] == 30_000
    # A final run's total is what it reached: the bar of a finished run is full.
    assert (fields["steps_done"], fields["steps_total"]) == (2, 2)
    assert fields["revision"] == 7
    assert not fields["corrupt"]
    assert len(fields["error"]) == index.ERROR_SUMMARY_CHARS
    assert fields["error"].endswith("…")


def test_live_run_total_comes_from_the_definition() -> None:
    # demo has 7 non-terminal states (greet, prepare, checks, 2 branches, report, ...).
    state = make_state("demo", RunStatus.RUNNING, {"greet": StepStatus.COMPLETED})
    expected = index.definition_step_count("demo")
    assert expected
    assert expected >= 5
    assert index.row_fields(state)["steps_total"] == expected
    # Unknown workflow: the states reached.
    other = make_state("no-such-workflow", RunStatus.RUNNING, {"a": StepStatus.RUNNING})
    assert index.row_fields(other)["steps_total"] == 1


def test_error_summary_falls_back_to_the_failed_step() -> None:
    state = make_state("demo", RunStatus.RUNNING, {"a": StepStatus.FAILED})
    assert index.row_fields(state)["error"] == "a: boom"


# Django configured with a database backend that imports no ``multiprocessing`` (SQLite's
# does, for cloning test databases): the baseline the imports below are measured against.
_IMPORT_PROBE = """
import importlib, sys
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "rest_framework",
                    "drf_spectacular", "wfstate"],
    DATABASES={"default": {"ENGINE": "django.db.backends.dummy"}},
)
django.setup()
for name in sys.argv[1:]:
    importlib.import_module(name)
print("multiprocessing" in sys.modules)
"""


def _imports_multiprocessing(*modules: str) -> bool:
    """Whether a fresh interpreter has ``multiprocessing`` after Django's set-up and
    importing ``modules``."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE, *modules],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {"True": True, "False": False}[done.stdout.strip()]


def test_importing_the_projection_does_not_import_multiprocessing() -> None:
    # Honest: Django alone does not import it, and the probe sees it when it happens.
    assert not _imports_multiprocessing()
    assert _imports_multiprocessing("wfstate.index.bulk")
    assert not _imports_multiprocessing("wfstate.index.projection")
    # The API's serializers read ROW_FIELDS from the package's public face.
    assert not _imports_multiprocessing("wfstate.api.serializers")


@pytest.mark.django_db
def test_index_state_never_moves_a_row_backwards() -> None:
    state = make_state(steps={"greet": StepStatus.RUNNING})
    state.revision = 5
    assert index.index_state(state)
    older = WorkflowState.from_dict(state.to_dict())
    older.revision = 3
    older.current_state = "old"
    assert not index.index_state(older)
    row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
    assert row.revision == 5
    assert row.current_state == "greet"
    # The same revision again (a re-index) is written.
    state.current_state = "again"
    assert index.index_state(state)
    assert WorkflowRun.objects.get(workflow_id=state.workflow_id).current_state == "again"


@pytest.mark.django_db
def test_corrupt_row_is_replaced_by_a_repaired_file_whatever_its_revision() -> None:
    state = make_state()
    state.revision = 9
    index.index_state(state)
    index.index_corrupt(state.workflow_id, "broken")
    row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
    assert (row.status, row.corrupt, row.error, row.revision) == ("corrupt", True, "broken", 9)
    state.revision = 1
    assert index.index_state(state)
    row.refresh_from_db()
    assert (row.status, row.corrupt, row.revision) == ("running", False, 1)
    assert index.remove(state.workflow_id) == 1
    assert not WorkflowRun.objects.exists()


@pytest.mark.django_db
def test_reindex_makes_the_file_win() -> None:
    store = get_store()
    state = make_state(steps={"greet": StepStatus.COMPLETED})
    store.save(state)
    index.index_state(state)
    WorkflowRun.objects.filter(workflow_id=state.workflow_id).update(revision=99, status="failed")
    assert index.reindex(state.workflow_id) == "indexed"
    row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
    assert (row.revision, row.status) == (state.revision, "running")
    store.path_for(state.workflow_id).write_bytes(b"{nope")
    assert index.reindex(state.workflow_id) == "corrupt"
    assert WorkflowRun.objects.get(workflow_id=state.workflow_id).corrupt
    store.path_for(state.workflow_id).unlink()
    assert index.reindex(state.workflow_id) == "removed"
    assert not WorkflowRun.objects.exists()


# --- the listener ----------------------------------------------------------------------------


@pytest.fixture
def listener() -> Any:
    made = index.make_listener()
    yield made
    made.close()


def _row(workflow_id: str) -> WorkflowRun | None:
    return WorkflowRun.objects.filter(workflow_id=workflow_id).first()


@pytest.mark.django_db(transaction=True)
def test_listener_writes_a_status_change_at_once_and_coalesces_the_rest(
    listener: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    real = row_writes.upsert

    def counting(workflow_id: str, fields: dict[str, Any]) -> bool:
        writes.append(fields["revision"])
        return real(workflow_id, fields)

    monkeypatch.setattr(row_writes, "upsert", counting)
    state = make_state(status=RunStatus.PENDING)
    state.revision = 1
    started = time.monotonic()
    listener(state)
    wait_for(lambda: _row(state.workflow_id), timeout=1.0, what="the first row")
    assert time.monotonic() - started < 0.3  # a status change: not held for coalescing

    # Fifty checkpoints without a status change in a burst: coalesced into few writes,
    # and the last one is in the row within a second of being handed over.
    state.status = RunStatus.RUNNING
    state.revision = 2
    listener(state)
    for revision in range(3, 53):
        state.revision = revision
        state.current_state = f"step{revision}"
        listener(state)
    handed_over = time.monotonic()
    row = wait_for(
        lambda: (r := _row(state.workflow_id)) and r.revision == 52 and r,
        timeout=1.0,
        what="revision 52 in the row",
    )
    assert time.monotonic() - handed_over < 1.0
    assert row.current_state == "step52"
    assert len(writes) < 10, writes


@pytest.mark.django_db(transaction=True)
def test_close_flushes_what_is_pending_and_stops_the_thread() -> None:
    listener = index.make_listener(delay=30.0)  # would hold a quiet checkpoint for 30 s
    state = make_state(status=RunStatus.RUNNING)
    state.revision = 1
    listener(state)
    wait_for(lambda: _row(state.workflow_id), timeout=1.0, what="the first row")
    state.revision = 2
    state.current_state = "later"
    listener(state)
    assert _row(state.workflow_id).revision == 1  # coalesced: still pending
    listener.close()
    row = _row(state.workflow_id)
    assert row is not None
    assert (row.revision, row.current_state) == (2, "later")
    assert listener._thread is not None
    assert not listener._thread.is_alive()
    listener.close()  # idempotent


@pytest.mark.django_db(transaction=True)
def test_an_index_failure_is_logged_and_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bool:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(row_writes, "upsert", broken)
    listener = index.make_listener()
    state = make_state()
    with caplog.at_level(logging.ERROR, logger="wfstate.index"):
        listener(state)  # must not raise
        assert listener.flush(timeout=2.0)
        listener.close()
    assert any("database on fire" in (r.exc_text or "") for r in caplog.records)
    assert all(r.name == "wfstate.index" for r in caplog.records)
    # And a state that cannot even be projected is logged too.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="wfstate.index"):
        index.make_listener()(object())  # type: ignore[arg-type]
    assert caplog.records


# --- a real run: every checkpoint reflected within a second -------------------------------------


class CheckpointClock:
    """Wraps the listener the engine gets: notes when each revision was handed over."""

    def __init__(self) -> None:
        self.handed: dict[int, float] = {}
        self.states: dict[int, dict[str, Any]] = {}
        self.lock = threading.Lock()

    def wrap(self, real: index.IndexListener) -> Any:
        clock = self

        class Wrapped:
            def __call__(self, state: WorkflowState) -> None:
                with clock.lock:
                    clock.handed[state.revision] = time.monotonic()
                    clock.states[state.revision] = index.row_fields(state)
                real(state)

            def close(self) -> None:
                real.close()

        return Wrapped()


@pytest.mark.django_db(transaction=True)
def test_every_checkpoint_of_a_run_reaches_its_row_within_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = CheckpointClock()
    real_make = index.make_listener
    monkeypatch.setattr(index, "make_listener", lambda **kw: clock.wrap(real_make(**kw)))
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    result: dict[str, Any] = {}

    def execute() -> None:
        try:
            result["state"] = runs.start_run("index_barrier", {"dir": str(barrier)})
        except BaseException as exc:
            result["error"] = exc
        finally:
            connections.close_all()

    seen: dict[int, float] = {}  # revision -> when the row first showed it (or later)

    def watch_until(condition: Any, what: str) -> None:
        """Poll the row (recording revisions) until ``condition()``; at most 15 s."""
        deadline = time.monotonic() + 15
        while not condition():
            row = WorkflowRun.objects.filter(workflow_id__isnull=False).first()
            if row is not None:
                now = time.monotonic()
                for revision in range(1, row.revision + 1):
                    seen.setdefault(revision, now)
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.005)

    thread = threading.Thread(target=execute)
    thread.start()
    try:
        store = get_store()
        for step in ("first", "second", "third"):
            watch_until(lambda s=step: (barrier / f"{s}.started").exists(), f"{step} to start")
            # Paused at the barrier: the file names the step in flight, and so does the
            # row, whole (every column equal to the file's projection), within a second.
            (workflow_id,) = store.list()
            state = store.load(workflow_id)
            assert state.current_state == step
            file_row = {"workflow_id": workflow_id, **index.row_fields(state)}
            paused_at = time.monotonic()
            watch_until(
                lambda r=file_row: rows().get(r["workflow_id"]) == r,
                f"the row to show {step} in flight",
            )
            assert time.monotonic() - paused_at < 1.0
            (barrier / f"{step}.go").touch()
        watch_until(lambda: not thread.is_alive(), "the run to end")
    finally:
        for step in ("first", "second", "third"):
            (barrier / f"{step}.go").touch()
        thread.join(30)
    assert "error" not in result, result.get("error")
    final: WorkflowState = result["state"]
    assert final.status == RunStatus.COMPLETED
    # Every checkpoint the engine made was visible in the row within one second.
    watch_until(lambda: max(seen, default=0) >= final.revision, "the last revision")
    assert set(clock.handed) >= {2, final.revision}
    late = {
        rev: round(seen[rev] - at, 3) for rev, at in clock.handed.items() if seen[rev] - at >= 1.0
    }
    assert not late, f"revisions later than 1 s in the row: {late}"
    # And the final row is exactly the file's projection.
    assert rows()[final.workflow_id] == {
        "workflow_id": final.workflow_id,
        **index.row_fields(get_store().load(final.workflow_id)),
    }


# --- sync: rebuilding from the files -----------------------------------------------------------


def _sync(*args: str) -> dict[str, Any]:
    out = StringIO()
    call_command("sync_workflow_index", "--json", *args, stdout=out, stderr=StringIO())
    return json.loads(out.getvalue())


def _files(n: int = 5) -> list[WorkflowState]:
    store = get_store()
    made = []
    kinds = [
        (RunStatus.COMPLETED, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.COMPLETED}),
        (RunStatus.FAILED, {"greet": StepStatus.FAILED}),
        (RunStatus.RUNNING, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.RUNNING}),
        (RunStatus.CANCELLED, {"greet": StepStatus.CANCELLED}),
        (RunStatus.PENDING, {}),
    ]
    for i in range(n):
        status, steps = kinds[i % len(kinds)]
        state = make_state("demo", status, steps)
        store.save(state)
        made.append(state)
    return made


@pytest.mark.django_db
def test_deleting_all_rows_and_syncing_restores_identical_rows() -> None:
    states = _files(10)
    for state in states:  # as the engine's listener left them
        index.index_state(state)
    before = rows()
    assert len(before) == 10
    WorkflowRun.objects.all().delete()
    report = _sync()
    assert (report["files"], report["created"], report["updated"]) == (10, 10, 0)
    assert rows() == before
    again = _sync()
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 10)


@pytest.mark.django_db
def test_a_file_edited_by_hand_wins_over_its_row() -> None:
    (state,) = _files(1)
    index.index_state(state)
    path = get_store().path_for(state.workflow_id)
    document = json.loads(path.read_text())
    assert document["status"] == "completed"
    document["status"] = "failed"
    document["error"] = "edited by hand"
    document["revision"] = 1  # even going backwards
    path.write_text(json.dumps(document, indent=2))
    report = _sync()
    assert report["updated"] == 1
    assert report["drifted"][0]["workflow_id"] == state.workflow_id
    row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
    assert (row.status, row.revision, row.error) == ("failed", 1, "edited by hand")


@pytest.mark.django_db
def test_prune_removes_rows_whose_file_is_gone() -> None:
    states = _files(3)
    _sync()
    get_store().path_for(states[0].workflow_id).unlink()
    report = _sync()
    assert report["stale_rows"] == [states[0].workflow_id]
    assert report["pruned"] == 0
    assert WorkflowRun.objects.count() == 3
    report = _sync("--prune")
    assert report["pruned"] == 1
    assert report["stale_rows"] == []
    assert set(rows()) == {s.workflow_id for s in states[1:]}


@pytest.mark.django_db
def test_sync_flags_corrupt_files_and_goes_on() -> None:
    states = _files(3)
    broken = states[1].workflow_id
    get_store().path_for(broken).write_bytes(b'{"workflow_id": "truncated')
    report = _sync()
    assert report["files"] == 3
    assert report["created"] == 3
    assert [c["workflow_id"] for c in report["corrupt"]] == [broken]
    assert "not valid JSON" in report["corrupt"][0]["error"]
    row = WorkflowRun.objects.get(workflow_id=broken)
    assert (row.status, row.corrupt) == ("corrupt", True)
    assert "not valid JSON" in row.error
    # Repaired: the next sync clears the flag.
    get_store().save(states[1])
    _sync()
    row.refresh_from_db()
    assert (row.status, row.corrupt) == (str(states[1].status), False)


@pytest.mark.django_db
def test_sync_progress_bar_goes_to_a_terminal_stderr_only() -> None:
    _files(3)

    class Terminal(StringIO):
        def isatty(self) -> bool:
            return True

    out, err = StringIO(), Terminal()
    call_command("sync_workflow_index", "--json", stdout=out, stderr=err)
    assert json.loads(out.getvalue())["files"] == 3  # stdout: the one JSON object only
    assert "\rsyncing [" in err.getvalue()
    assert "3/3 100%" in err.getvalue()
    err = StringIO()  # not a terminal: no bar
    call_command("sync_workflow_index", stdout=StringIO(), stderr=err)
    assert err.getvalue() == ""


@pytest.mark.django_db
def test_list_workflow_runs_reads_the_index() -> None:
    states = _files(5)
    _sync()
    out = StringIO()
    call_command("list_workflow_runs", "--json", "--status", "failed", stdout=out)
    listed = json.loads(out.getvalue())
    assert [r["workflow_id"] for r in listed["runs"]] == [states[1].workflow_id]
    assert listed["runs"][0]["started_at"] == "2026-11-27T11:00:00Z"
    out = StringIO()
    call_command("list_workflow_runs", "--workflow", "demo", "--limit", "2", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("RUN")
    assert len(lines) == 3
    # Rows only: a file without a row is not listed (lists never scan the directory).
    WorkflowRun.objects.all().delete()
    out = StringIO()
    call_command("list_workflow_runs", "--json", stdout=out)
    assert json.loads(out.getvalue())["count"] == 0


# --- sync's fast path: documents projected as they are parsed, and a worker process ------------


def _odd_documents() -> list[tuple[str, Any]]:
    """Variants of a healthy state document: some take sync's fast path, some the store's."""
    base = make_state(
        "demo", RunStatus.FAILED, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.FAILED}
    ).to_dict()
    base["revision"] = 3

    def variant(**changes: Any) -> dict[str, Any]:
        document = json.loads(json.dumps(base))
        for key, value in changes.items():
            if value is ...:
                document.pop(key, None)
            else:
                document[key] = value
        return document

    step = dict(base["states"]["greet"])
    return [
        ("plain", variant()),
        ("running", variant(status="running", completed_at=None)),
        ("no states", variant(states=None, history=None, inputs=None)),
        ("run error", variant(error="x" * 900)),
        (
            "old schema",
            {
                k: v
                for k, v in variant(id=base["workflow_id"]).items()
                if k not in ("schema_version", "workflow_id", "history")
            },
        ),
        ("newer schema", variant(schema_version=2)),
        ("bool schema", variant(schema_version=True)),
        ("revision as text", variant(revision="4")),
        ("revision null", variant(revision=None)),
        ("bad status", variant(status="sleeping")),
        ("list status", variant(status=["running"])),
        ("no name", variant(workflow_name=...)),
        ("numeric name", variant(workflow_name=7)),
        ("other run", variant(workflow_id="00000000-0000-4000-8000-000000000000")),
        ("bad time", variant(updated_at="yesterday")),
        ("naive time", variant(completed_at="2026-11-27T11:00:30")),
        ("numeric current", variant(current_state=5)),
        ("step not an object", variant(states={"greet": "done"})),
        ("step without name", variant(states={"greet": {"status": "completed"}})),
        ("step bad status", variant(states={"greet": {**step, "status": "great"}})),
        ("step attempt text", variant(states={"greet": {**step, "attempt": "2"}})),
        ("step attempt junk", variant(states={"greet": {**step, "attempt": "x"}})),
        ("inputs a list", variant(inputs=[["a", 1]])),
        ("a list", [1, 2]),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize("workers", [0, 1])
def test_sync_fast_path_rows_equal_the_stores_parser(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a file holds, sync's row is the one ``store.load()`` + ``row_fields()``
    give, or the file is flagged corrupt with the store's own message."""
    monkeypatch.setattr(bulk, "can_fork_worker", lambda: True)
    store = get_store()
    expected: dict[str, Any] = {}
    for _, document in _odd_documents():
        state = make_state()
        path = store.path_for(state.workflow_id)
        if isinstance(document, dict):
            document = {**document}
            for key in ("workflow_id", "id"):  # this file's run, unless the case says not
                if key in document and not document[key].startswith("00000000"):
                    document[key] = state.workflow_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(json.dumps(document).encode())
        try:
            loaded = store.load(state.workflow_id)
            expected[state.workflow_id] = {
                "workflow_id": state.workflow_id,
                **index.row_fields(loaded),
            }
        except CorruptState as exc:
            expected[state.workflow_id] = str(exc)
        except Exception as exc:  # a projection error: flagged corrupt by sync
            expected[state.workflow_id] = f"projection: {exc}"
    report = index.sync(store, workers=workers)
    assert report.files == len(expected)
    got = rows()
    for workflow_id, want in expected.items():
        if isinstance(want, dict):
            assert got[workflow_id] == want, workflow_id
            assert workflow_id not in report.corrupt
        elif want.startswith("projection: "):
            assert workflow_id in report.corrupt
            assert want.removeprefix("projection: ") in report.corrupt[workflow_id]
        else:
            assert report.corrupt[workflow_id] == want
    again = index.sync(store, workers=workers)
    assert (again.created, again.updated, again.unchanged) == (0, 0, len(expected))


@pytest.mark.django_db
def test_sync_in_a_worker_process_equals_sync_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bulk, "can_fork_worker", lambda: True)
    monkeypatch.setattr(bulk, "SYNC_READ_CHUNK", 3)  # several batches through the worker
    monkeypatch.setattr(bulk, "SYNC_BATCH", 4)  # and several write transactions
    states = _files(11)
    get_store().path_for(states[2].workflow_id).write_bytes(b"{")
    progress: list[tuple[int, int]] = []
    parallel = index.sync(workers=1, progress=lambda done, total: progress.append((done, total)))
    parallel_rows = rows()
    WorkflowRun.objects.all().delete()
    serial = index.sync(workers=0)
    assert rows() == parallel_rows
    assert (
        (parallel.created, len(parallel.corrupt))
        == (serial.created, len(serial.corrupt))
        == (
            11,
            1,
        )
    )
    assert progress[0] == (0, 11)
    assert progress[-1] == (11, 11)


@pytest.mark.django_db
def test_sync_reads_here_when_the_worker_process_dies(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(bulk, "can_fork_worker", lambda: True)
    monkeypatch.setattr(bulk, "SYNC_READ_CHUNK", 2)

    def dying(*args: Any) -> None:
        import os

        os._exit(3)

    monkeypatch.setattr(reader, "_worker_main", dying)
    _files(5)
    with caplog.at_level(logging.WARNING, logger="wfstate.index"):
        report = index.sync(workers=1)
    assert report.created == 5
    assert any("worker process failed" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_prune_keeps_a_row_whose_file_appeared_after_the_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (early,) = _files(1)
    late = make_state()
    index.index_state(late)  # its row exists; its file is written "during" the sync
    real_list = type(get_store()).list

    def listing(store: Any) -> list[str]:
        listed = real_list(store)
        store.save(late)
        return listed

    monkeypatch.setattr(type(get_store()), "list", listing)
    report = index.sync(prune=True)
    assert report.pruned == 0
    assert set(rows()) == {early.workflow_id, late.workflow_id}


# --- one odd value never stops the index (issue 9) ----------------------------------------------


def _on_postgres() -> None:
    if connections["default"].vendor != "postgresql":
        pytest.skip("PostgreSQL refuses NUL in text; SQLite keeps it (WFSTATE_TEST_DB=postgres)")


def _write_document(state: WorkflowState, **changes: Any) -> None:
    """Write ``state``'s file by hand, with ``changes`` to its document."""
    path = get_store().path_for(state.workflow_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(json.dumps({**state.to_dict(), **changes}).encode())


@pytest.mark.django_db
@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("revision", [-3, 10**20, index.REVISION_MAX + 1])
def test_a_revision_out_of_range_is_corrupt_and_every_other_file_is_indexed(
    revision: int, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk, "can_fork_worker", lambda: True)
    states = _files(4)
    odd = states[1]
    _write_document(odd, revision=revision)
    report = index.sync(workers=workers)  # must not raise
    assert list(report.corrupt) == [odd.workflow_id]
    assert (
        f"revision {revision} is outside 0..{index.REVISION_MAX}" in report.corrupt[odd.workflow_id]
    )
    got = rows()
    for state in states:
        if state is not odd:
            assert got[state.workflow_id] == {
                "workflow_id": state.workflow_id,
                **index.row_fields(state),
            }
    assert (got[odd.workflow_id]["status"], got[odd.workflow_id]["corrupt"]) == ("corrupt", True)
    # Reported again, not rewritten, by the next sync; and by the command, which exits 0.
    again = index.sync(workers=workers)
    assert (again.created, again.updated, again.unchanged) == (0, 0, 4)
    assert list(again.corrupt) == [odd.workflow_id]
    # One run re-indexed from its file (the admin's action) says corrupt too.
    WorkflowRun.objects.filter(workflow_id=odd.workflow_id).delete()
    assert index.reindex(odd.workflow_id) == "corrupt"
    assert WorkflowRun.objects.get(workflow_id=odd.workflow_id).corrupt


@pytest.mark.django_db
def test_a_batch_the_database_refuses_is_written_row_by_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should the database refuse a value the projection let through, only that file is
    reported corrupt (with the database's error) and the rest of its batch is written."""
    from django.db import DataError

    states = _files(3)
    refused = states[0].workflow_id
    real = bulk.Table.upsert

    def picky(table: Any, batch: list[tuple[str, Any]]) -> None:
        if any(workflow_id == refused for workflow_id, _ in batch):
            raise DataError("value out of range for this column")
        real(table, batch)

    monkeypatch.setattr(bulk.Table, "upsert", picky)
    report = index.sync(workers=0)
    assert list(report.corrupt) == [refused]
    assert "value out of range for this column" in report.corrupt[refused]
    got = rows()
    assert got[refused]["corrupt"] is True
    assert {wid for wid, row in got.items() if not row["corrupt"]} == {
        s.workflow_id for s in states[1:]
    }


@pytest.mark.django_db
def test_nul_characters_never_reach_a_text_column() -> None:
    state = make_state("demo", RunStatus.FAILED, {"greet": StepStatus.FAILED})
    state.current_state = "gr\x00eet"
    state.workflow_version = "1\x00"
    state.states["greet"].error = "exit code 3: bad\x00byte"
    fields = index.row_fields(state)
    assert fields["current_state"] == "greet"
    assert fields["workflow_version"] == "1"
    assert fields["error"] == "greet: exit code 3: badbyte"
    state.error = "\x00 run error \x00"
    assert index.row_fields(state)["error"] == "run error"
    assert index.corrupt_fields("broken\x00file")["error"] == "brokenfile"


NUL_WORKFLOW = """\
name: nul_stderr
version: "1"
states:
  initial: noisy
  noisy:
    type: step
    command: printf 'bad\\000byte\\n' >&2; exit 3
    on_success: done
  done: {type: terminal, status: success}
"""


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_a_step_printing_nul_to_stderr_still_updates_its_row(
    tmp_path: Path, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The live listener path: the run's failed step error holds a NUL from stderr."""
    _on_postgres()
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "nul_stderr.yaml").write_text(NUL_WORKFLOW)
    settings.WFSTATE = {
        **settings.WFSTATE,
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], workflows],
    }
    with caplog.at_level(logging.ERROR, logger="wfstate.index"):
        final = runs.start_run("nul_stderr")
    assert final.status == RunStatus.FAILED
    loaded = get_store().load(final.workflow_id)
    assert "\x00" in str(loaded.states["noisy"].error)  # the file keeps what was printed
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    row = WorkflowRun.objects.get(workflow_id=final.workflow_id)
    assert (row.status, row.revision) == ("failed", loaded.revision)
    assert "badbyte" in row.error
    assert rows()[final.workflow_id] == {
        "workflow_id": final.workflow_id,
        **index.row_fields(loaded),
    }


@pytest.mark.postgres
@pytest.mark.django_db
@pytest.mark.parametrize("workers", [0, 1])
def test_postgres_sync_indexes_files_with_nul_in_text(
    workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sync path: NULs in the error, the current state and the version."""
    _on_postgres()
    monkeypatch.setattr(bulk, "can_fork_worker", lambda: True)
    states = _files(3)
    odd = states[0]
    _write_document(
        odd, error="exit code 3: bad\x00byte", current_state="gr\x00eet", workflow_version="1\x00"
    )
    report = _sync() if workers == 0 else index.sync(workers=1).as_dict()
    assert (report["created"], report["corrupt"]) == (3, [])
    row = WorkflowRun.objects.get(workflow_id=odd.workflow_id)
    assert (row.error, row.current_state, row.workflow_version) == (
        "exit code 3: badbyte",
        "greet",
        "1",
    )
    again = _sync()
    assert (again["updated"], again["unchanged"], again["drifted"]) == (0, 3, [])


# --- USE_TZ = False: rows in TIME_ZONE, and no endless drift ------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("workers", [0, 1])
def test_without_use_tz_rows_are_in_time_zone_and_a_second_sync_finds_no_drift(
    settings: Any, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime as dt

    monkeypatch.setattr(bulk, "can_fork_worker", lambda: True)
    settings.USE_TZ = False
    settings.TIME_ZONE = "America/New_York"
    states = _files(5)
    first = index.sync(workers=workers)
    assert (first.created, first.corrupt) == (5, {})
    row = WorkflowRun.objects.get(workflow_id=states[0].workflow_id)
    # 11:00 UTC on 27 November is 06:00 in New York (EST), kept naive as Django does.
    assert row.started_at == dt.datetime(2026, 11, 27, 6, 0)
    assert row.completed_at == dt.datetime(2026, 11, 27, 6, 0, 30)
    second = index.sync(workers=workers)
    assert (second.updated, second.unchanged, second.drifted) == (0, 5, {})
    # The engine's single-row writes agree with the sync's: no drift between them.
    WorkflowRun.objects.all().delete()
    for state in states:
        assert index.index_state(state)
    third = index.sync(workers=workers)
    assert (third.created, third.updated, third.unchanged) == (0, 0, 5)
    assert rows()[states[0].workflow_id]["started_at"] == dt.datetime(2026, 11, 27, 6, 0)
