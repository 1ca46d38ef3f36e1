"""Helpers shared by the index, admin and sync/doctor tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from wfstate.index import ROW_FIELDS
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState

COMPARED = ("workflow_id", *ROW_FIELDS)


def make_state(
    name: str = "demo",
    status: RunStatus = RunStatus.RUNNING,
    steps: dict[str, StepStatus] | None = None,
    current: str | None = None,
    **kwargs: Any,
) -> WorkflowState:
    """A state with steps one second apart (times in 2026, as the files write them)."""
    state = WorkflowState.new(name, inputs={"who": "test"}, workflow_version="1.0.0", **kwargs)
    state.status = status
    state.started_at = "2026-11-27T11:00:00.000000Z"
    for i, (step, step_status) in enumerate((steps or {}).items()):
        state.states[step] = StepResult(
            name=step,
            status=step_status,
            output=f"{step} output\n",
            started_at=f"2026-11-27T11:00:{i * 2:02d}.000000Z",
            completed_at=None
            if step_status == StepStatus.RUNNING
            else f"2026-11-27T11:00:{i * 2 + 1:02d}.500000Z",
            duration_ms=None if step_status == StepStatus.RUNNING else 1500,
            exit_code=None if step_status == StepStatus.RUNNING else 0,
            error="boom" if step_status == StepStatus.FAILED else None,
        )
    state.current_state = current or (list(state.states)[-1] if state.states else None)
    if status.is_final:
        state.completed_at = "2026-11-27T11:00:30.000000Z"
    return state


def rows() -> dict[str, dict[str, Any]]:
    return {r["workflow_id"]: r for r in WorkflowRun.objects.values(*COMPARED)}


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
