"""The index listener's cost on the executor's thread: a copy, never the projection."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from tests.helpers import make_state, wait_for
from wfstate import index
from wfstate.index import listener as listener_module
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, StepResult, StepStatus


@pytest.mark.django_db(transaction=True)
def test_the_projection_runs_in_the_flusher_for_the_checkpoints_it_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    real = listener_module.project

    def recording(document: Any, steps: Any = None) -> dict[str, Any]:
        calls.append(threading.current_thread().name)
        return real(document, steps)

    monkeypatch.setattr(listener_module, "project", recording)
    listener = index.make_listener(delay=30.0)
    try:
        state = make_state(status=RunStatus.RUNNING)
        for revision in range(1, 41):
            state.revision = revision
            state.states[f"s{revision}"] = StepResult(
                name=f"s{revision}", status=StepStatus.COMPLETED
            )
            listener(state)
        # The step this checkpoint names changes after the hand-over: the row must
        # still be the checkpoint's, not the live state's.
        state.states["s40"].status = StepStatus.FAILED
        state.states["s40"].error = "changed after the checkpoint"
        assert listener.flush(timeout=10.0)
    finally:
        listener.close()
    assert calls, "nothing projected"
    assert threading.current_thread().name not in calls
    assert len(calls) < 10, calls  # coalesced: not one projection per checkpoint
    row = wait_for(
        lambda: WorkflowRun.objects.filter(workflow_id=state.workflow_id, revision=40).first(),
        timeout=5.0,
        what="revision 40 in the row",
    )
    assert row.steps_done == 40
    assert row.error == ""


@pytest.mark.django_db(transaction=True)
def test_the_row_is_the_projection_of_the_checkpoint_handed_over() -> None:
    listener = index.make_listener()
    try:
        state = make_state(status=RunStatus.RUNNING)
        state.revision = 3
        state.states["a"] = StepResult(name="a", status=StepStatus.COMPLETED)
        state.states["b"] = StepResult(name="b", status=StepStatus.FAILED, error="boom")
        state.states["c"] = StepResult(name="c")
        expected = index.row_fields(state)
        listener(state)
        assert listener.flush(timeout=10.0)
    finally:
        listener.close()
    row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
    for name in ("status", "revision", "steps_done", "steps_total", "error", "current_state"):
        assert getattr(row, name) == expected[name], name
    assert "b: boom" in row.error
