"""What the store writes and leaves behind: never a state it would refuse to read, the
raw bytes of a spilled output, and no lock file for a run that does not exist (a 404
resume, a task for a deleted run) or was quarantined."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.contract_store import ContractStore
from tests.helpers import call
from wfstate import runs
from wfstate.definitions import loads_definition
from wfstate.engine import Executor
from wfstate.exceptions import RunNotFound
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores import JSONFileStore, StateStore, get_store

API = "/api/wfstate/"

TOO_BIG = """
name: too_big
version: "1"
states:
  initial: small
  small: {type: step, command: echo small, on_success: big}
  big: {type: step, command: "head -c 30000 /dev/zero | tr '\\\\0' x", on_success: after}
  after: {type: step, command: echo after, on_success: done}
  done: {type: terminal, status: success}
"""


def _store(kind: str, tmp_path: Path, **options: Any) -> StateStore:
    if kind == "json":
        return JSONFileStore(tmp_path / "storage", **options)
    return ContractStore(tmp_path / "storage", **options)


@pytest.mark.parametrize("kind", ["json", "contract"])
def test_a_state_grown_too_large_fails_the_run_and_stays_readable(
    kind: str, tmp_path: Path
) -> None:
    store = _store(kind, tmp_path, max_bytes=20_000)
    definition = loads_definition(TOO_BIG)
    state = WorkflowState.new(definition.name, workflow_version="1")
    store.save(state)
    # 30 KB inline (under max_inline_output) makes the state over the store's 20 KB.
    final = Executor(store, definition, max_inline_output=65536).execute(state)
    assert final.status == RunStatus.FAILED
    assert "too large" in (final.error or "") and "20000" in (final.error or "")
    assert "'big'" in (final.error or "")
    # The file is one the store reads (the old executor wrote a completed run that
    # load() then reported corrupt, and doctor --fix quarantined).
    loaded = store.load(state.workflow_id)
    assert loaded.to_dict() == final.to_dict()
    assert loaded.status == RunStatus.FAILED
    big = loaded.states["big"]
    assert big.status == StepStatus.FAILED and big.output is None
    assert big.output_truncated and "side files" in (big.error or "")
    # The run stopped there: the step whose start could not be saved never ran.
    after = loaded.states["after"]
    assert after.status == StepStatus.FAILED and "not run" in (after.error or "")
    assert loaded.states["small"].output == "small\n"  # what fitted is kept
    # Nothing lost: the output is kept beside the state.
    assert store.load_output(state.workflow_id, "big", "stdout") == b"x" * 30000


def test_a_spilled_output_keeps_the_bytes_the_process_wrote(tmp_path: Path) -> None:
    store = JSONFileStore(tmp_path / "storage")
    definition = loads_definition(
        """
name: raw
version: "1"
states:
  initial: noisy
  noisy:
    type: step
    command: "printf '\\\\377\\\\376caf\\\\303\\\\251 '; head -c 5000 /dev/zero | tr '\\\\0' x"
    on_success: done
  done: {type: terminal, status: success}
"""
    )
    state = WorkflowState.new(definition.name, workflow_version="1")
    store.save(state)
    final = Executor(store, definition, max_inline_output=1000).execute(state)
    assert final.status == RunStatus.COMPLETED, final.error
    step = final.states["noisy"]
    assert step.output_truncated
    # Invalid UTF-8 included, byte for byte (not U+FFFD re-encoded as EF BF BD).
    expected = b"\xff\xfecaf\xc3\xa9 " + b"x" * 5000
    assert store.load_output(state.workflow_id, "noisy", "stdout") == expected
    assert step.output.startswith("\ufffd\ufffdcafé x")  # the JSON keeps a text
    assert len(step.output.encode()) <= 1000


# --- no lock file for a run that does not exist ----------------------------------------


def _left(workflow_id: str) -> list[str]:
    store = get_store()
    assert isinstance(store, JSONFileStore)
    if not store.directory.exists():
        return []
    return sorted(name for name in os.listdir(store.directory) if workflow_id in name)


@pytest.mark.django_db
@pytest.mark.usefixtures("wfstate_settings")
def test_resume_of_an_unknown_run_is_404_and_leaves_no_lock_file(admin_client: Client) -> None:
    get_store().save(WorkflowState.new("demo"))  # the states directory exists
    unknown = str(uuid.uuid4())
    response = admin_client.post(
        f"{API}runs/{unknown}/resume/", data={}, content_type="application/json"
    )
    assert response.status_code == 404, response.content
    assert _left(unknown) == []


@pytest.mark.django_db
@pytest.mark.usefixtures("wfstate_settings")
def test_a_task_for_a_deleted_run_leaves_no_lock_file() -> None:
    state, _ = runs.create_run("api_quick")
    runs.delete_run(state.workflow_id)
    assert _left(state.workflow_id) == []
    with pytest.raises(RunNotFound):
        runs.execute(state.workflow_id)  # what the task does
    assert _left(state.workflow_id) == []


@pytest.mark.django_db
@pytest.mark.usefixtures("wfstate_settings")
def test_doctor_fix_quarantines_a_run_with_everything_kept_for_it() -> None:
    store = get_store()
    assert isinstance(store, JSONFileStore)
    state, _ = runs.create_run("api_quick")
    workflow_id = state.workflow_id
    with store.run_lock(workflow_id):
        pass
    store.save_output(workflow_id, "step", "stdout", b"whole")
    store.request_cancel(workflow_id)
    store.path_for(workflow_id).write_bytes(b"[1, 2")
    code, out, _ = call("doctor", "--fix", "--json")
    report = json.loads(out)
    assert workflow_id in report["fixed"]["quarantined"], report
    assert code == 0, report
    assert _left(workflow_id) == []  # no .lock, .run.lock, .cancel or .outputs left
    quarantined = sorted(os.listdir(store.quarantine_directory))
    assert quarantined == [f"{workflow_id}.json", f"{workflow_id}.outputs"]
    assert (store.quarantine_directory / f"{workflow_id}.json").read_bytes() == b"[1, 2"
