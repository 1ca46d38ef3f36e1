"""Background execution through Django's Tasks API with a real database worker."""

from __future__ import annotations

import signal
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import call_command

from tests.helpers import spawn, wait_for
from wfstate import runs, tasks
from wfstate.state import RunStatus

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def storage(settings: Any, tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": path}
    return path


@pytest.fixture
def worker(storage: Path) -> Any:
    proc = spawn(
        storage,
        "db_worker",
        "--no-reload",
        "--no-startup-delay",
        "--interval",
        "0.1",
        WFSTATE_INDEX_ON_WRITE="1",
    )
    yield proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except Exception:
        proc.kill()
        proc.communicate()


def test_detach_returns_at_once_and_a_real_worker_runs_it(storage: Path, worker: Any) -> None:
    out = StringIO()
    call_command("run_workflow", "demo", "--detach", "--json", "--input", "who=worker", stdout=out)
    payload = orjson.loads(out.getvalue())
    workflow_id = payload["workflow_id"]
    assert payload["status"] == "pending"  # returned before anything ran

    def completed() -> bool:
        return runs.load_run(workflow_id).status == RunStatus.COMPLETED

    try:
        wait_for(completed, 60, "the worker to complete the run")
    except AssertionError:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=20)
        raise AssertionError(f"worker output:\n{out}\n{err}") from None
    state = runs.load_run(workflow_id)
    assert state.states["done"].output == "Greeted worker"


def test_a_duplicate_delivery_does_not_execute_twice(storage: Path) -> None:
    state, _ = runs.create_run("demo", {"who": "twice"})
    # The run lock is held (as by another worker): the task gives up at once.
    from wfstate.stores import get_store

    with get_store().run_lock(state.workflow_id):
        assert tasks.execute_workflow.call(state.workflow_id) == "already running"
    assert tasks.execute_workflow.call(state.workflow_id) == "completed"
    # Delivered again after completion: nothing runs, the outcome is unchanged.
    before = runs.load_run(state.workflow_id).revision
    assert tasks.execute_workflow.call(state.workflow_id) == "completed"
    assert runs.load_run(state.workflow_id).revision == before
