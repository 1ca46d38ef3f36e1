"""sync_workflow_index and doctor against corrupt files, temp files, drift and stale rows."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from tests.helpers import call, make_state
from wfstate import index
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores import get_store

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("wfstate_settings")]


command = call


def doctor(*args: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = command("doctor", "--json", *args)
    return code, json.loads(out)  # one JSON object on stdout, nothing else


def files(n: int) -> list[WorkflowState]:
    made = []
    for i in range(n):
        state = make_state(
            "demo",
            RunStatus.COMPLETED if i % 2 else RunStatus.FAILED,
            {"greet": StepStatus.COMPLETED},
        )
        get_store().save(state)
        made.append(state)
    return made


def orphan_temp(state: WorkflowState) -> str:
    path = get_store().path_for(state.workflow_id)
    temp = path.with_name(f".{path.name}.0123456789ab.tmp")
    temp.write_bytes(b'{"half": ')
    return str(temp)


def test_a_healthy_store_is_fine() -> None:
    files(3)
    index.sync()
    code, report = doctor()
    assert code == 0
    assert report["ok"] is True
    assert report["problems"] == 0
    code, out, _ = command("doctor")
    assert code == 0
    assert "no problems" in out


def test_doctor_reports_every_kind_of_problem_and_exits_1() -> None:
    drifted, missing, corrupt, ok = files(4)
    index.sync()
    # Drift: the row says another status and revision than its file.
    WorkflowRun.objects.filter(workflow_id=drifted.workflow_id).update(
        status="running", revision=99
    )
    # A file without a row, a row without a file.
    WorkflowRun.objects.filter(workflow_id=missing.workflow_id).delete()
    ghost = make_state()
    index.index_state(ghost)
    # A corrupt file, an orphan temp file.
    get_store().path_for(corrupt.workflow_id).write_bytes(b"")
    temp = orphan_temp(ok)

    code, report = doctor()
    assert code == 1
    assert report["found"] == {
        "drifted": 1,
        "missing_rows": 1,
        "stale_rows": 1,
        "corrupt": 1,
        "temp_files": 1,
        "orphan_side_files": 0,
    }
    (drift,) = report["drifted"]
    assert drift["workflow_id"] == drifted.workflow_id
    assert drift["status"] == {"row": "running", "file": str(drifted.status)}
    assert drift["revision"] == {"row": 99, "file": drifted.revision}
    assert report["missing_rows"] == [missing.workflow_id]
    assert report["stale_rows"] == [ghost.workflow_id]
    assert report["corrupt"][0]["workflow_id"] == corrupt.workflow_id
    assert "is empty" in report["corrupt"][0]["error"]
    assert report["temp_files"] == [temp]
    # Without --fix nothing changed.
    assert os.path.exists(temp)
    assert WorkflowRun.objects.get(workflow_id=drifted.workflow_id).status == "running"
    # The human report says the same, and how to fix it.
    code, out, message = command("doctor")
    assert code == 1
    assert "doctor --fix" in message
    assert "corrupt state files: 1" in out
    assert "orphan temp files: 1" in out


def test_doctor_fix_repairs_quarantines_and_sweeps() -> None:
    drifted, missing, corrupt, ok = files(4)
    index.sync()
    WorkflowRun.objects.filter(workflow_id=drifted.workflow_id).update(status="running")
    WorkflowRun.objects.filter(workflow_id=missing.workflow_id).delete()
    ghost = make_state()
    index.index_state(ghost)
    store = get_store()
    corrupt_path = store.path_for(corrupt.workflow_id)
    corrupt_path.write_bytes(b"\xff\xfe not utf-8")
    temp = orphan_temp(ok)

    code, report = doctor("--fix")
    assert code == 0
    assert report["ok"] is True
    quarantined = report["fixed"]["quarantined"][corrupt.workflow_id]
    assert quarantined == str(store.root / "quarantine" / corrupt_path.name)
    # Moved, never deleted: the bytes are intact in quarantine.
    assert not corrupt_path.exists()
    with open(quarantined, "rb") as fh:
        assert fh.read() == b"\xff\xfe not utf-8"
    assert report["fixed"]["temp_files_removed"] == [temp]
    assert not os.path.exists(temp)
    assert WorkflowRun.objects.get(workflow_id=drifted.workflow_id).status == str(drifted.status)
    assert WorkflowRun.objects.filter(workflow_id=missing.workflow_id).exists()
    assert not WorkflowRun.objects.filter(workflow_id=ghost.workflow_id).exists()
    assert not WorkflowRun.objects.filter(workflow_id=corrupt.workflow_id).exists()
    assert doctor() == (0, doctor()[1])
    assert doctor()[1]["problems"] == 0


def test_sync_reports_corrupt_files_and_goes_on() -> None:
    states = files(3)
    get_store().path_for(states[0].workflow_id).write_bytes(b"[1, 2, 3]")
    code, out, _ = command("sync_workflow_index")
    assert code == 0
    assert "3 files: 3 rows created" in out
    assert f"corrupt {states[0].workflow_id}" in out
    assert "not a state object" in out
    assert WorkflowRun.objects.filter(corrupt=True).count() == 1
    assert WorkflowRun.objects.filter(corrupt=False).count() == 2


def test_doctor_reports_crashed_runs_without_counting_them() -> None:
    state = make_state("demo", RunStatus.RUNNING, {"greet": StepStatus.RUNNING})
    get_store().save(state)
    index.index_state(state)
    code, report = doctor()
    assert code == 0
    assert report["crashed_runs"] == [state.workflow_id]
    with get_store().run_lock(state.workflow_id):
        assert doctor()[1]["crashed_runs"] == []


def test_a_corrupt_file_repaired_before_the_fix_is_left_in_place() -> None:
    (state,) = files(1)
    path = get_store().path_for(state.workflow_id)
    good = path.read_bytes()
    path.write_bytes(b"{")
    assert get_store().quarantine(state.workflow_id) is not None
    # Put back, then ask again: not corrupt any more, so it stays.
    (get_store().quarantine_directory / path.name).rename(path)
    path.write_bytes(good)
    assert get_store().quarantine(state.workflow_id) is None
    assert path.exists()


# --- one odd value never stops sync or doctor (issue 9) -----------------------------------------


def write_document(state: WorkflowState, **changes: Any) -> None:
    """Write ``state``'s file by hand, with ``changes`` to its document."""
    path = get_store().path_for(state.workflow_id)
    path.write_bytes(json.dumps({**state.to_dict(), **changes}).encode())


@pytest.mark.parametrize("revision", [-3, 10**20])
def test_a_revision_out_of_range_is_reported_corrupt_by_sync_and_doctor(revision: int) -> None:
    states = files(3)
    odd = states[0]
    write_document(odd, revision=revision)
    # doctor: reported corrupt (the other files only miss their rows), nothing crashes.
    code, report = doctor()
    assert code == 1
    assert [c["workflow_id"] for c in report["corrupt"]] == [odd.workflow_id]
    assert "is outside 0.." in report["corrupt"][0]["error"]
    assert sorted(report["missing_rows"]) == sorted(s.workflow_id for s in states)
    # sync_workflow_index: the same, and every other file indexed.
    code, out, _ = command("sync_workflow_index")
    assert code == 0
    assert "3 files: 3 rows created" in out
    # The store refuses the document (a revision out of range is no state) naming the file.
    assert f"corrupt {odd.workflow_id}: " in out
    assert f"{odd.workflow_id}.json is not a valid state: revision {revision} is outside" in out
    assert set(WorkflowRun.objects.filter(corrupt=False).values_list("workflow_id", flat=True)) == {
        s.workflow_id for s in states[1:]
    }
    # doctor --fix: the file is moved to quarantine (never deleted), and all is well.
    code, report = doctor("--fix")
    assert code == 0, report
    quarantined = report["fixed"]["quarantined"][odd.workflow_id]
    with open(quarantined, "rb") as fh:
        assert json.loads(fh.read())["revision"] == revision
    assert not get_store().exists(odd.workflow_id)
    assert doctor()[1]["problems"] == 0


@pytest.mark.postgres
def test_postgres_doctor_fix_indexes_a_file_with_nul_in_its_error() -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL refuses NUL in text; SQLite keeps it (WFSTATE_TEST_DB=postgres)")
    states = files(2)
    odd = states[0]
    write_document(odd, error="exit code 3: bad\x00byte", current_state="gr\x00eet")
    code, report = doctor()
    assert code == 1
    assert report["found"]["missing_rows"] == 2
    assert report["corrupt"] == []
    code, report = doctor("--fix")
    assert code == 0, report
    assert report["fixed"]["rows_created"] == 2
    row = WorkflowRun.objects.get(workflow_id=odd.workflow_id)
    assert (row.error, row.current_state, row.corrupt) == ("exit code 3: badbyte", "greet", False)
    code, report = doctor()
    assert (code, report["problems"]) == (0, 0)  # no drift between the row and its file
