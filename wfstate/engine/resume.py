"""Resuming and cancelling runs: deciding where a run goes on from (docs/workflows.md).

Nothing is silently discarded: every step result a resume rewinds past is moved into
``history`` with the resume's time and options.
"""

from __future__ import annotations

from typing import Any

from wfstate.definitions.model import WorkflowDefinition
from wfstate.exceptions import DefinitionChanged, NotResumable, RunFinished
from wfstate.state import RunStatus, StepStatus, WorkflowState, utcnow


def _executed_order(state: WorkflowState) -> list[str]:
    """Executed states, oldest first (by start time; dict order breaks ties)."""
    names = list(state.states)
    return sorted(names, key=lambda n: (state.states[n].started_at or "", names.index(n)))


def resume_target(state: WorkflowState, definition: WorkflowDefinition, from_state: str) -> str:
    """The state a resume ``--from`` starts at.

    Raises:
        NotResumable: the run cannot go on from there.
    """
    branches = {b for s in definition.states.values() for b in s.parallel}
    executed = [n for n in _executed_order(state) if n in definition.states]
    # Top-level steps only: a parallel block's branches are re-run through their block.
    steps = [n for n in executed if definition.states[n].type != "terminal" and n not in branches]
    current = state.current_state
    if (
        current is not None
        and current in definition.states
        and definition.states[current].type == "terminal"
    ):
        # The run ended in a terminal: "current" is the last step that ran before it.
        current = steps[-1] if steps else definition.initial
    if from_state == "current":
        return current or definition.initial
    if from_state == "previous":
        completed = [n for n in steps if state.states[n].status == StepStatus.COMPLETED]
        if not completed:
            raise NotResumable(f"run {state.workflow_id} has no completed step to go back to")
        return completed[-1]
    if from_state not in definition.states:
        raise NotResumable(
            f"run {state.workflow_id}: workflow '{definition.name}' has no state '{from_state}'"
        )
    if definition.states[from_state].type == "terminal":
        raise NotResumable(f"run {state.workflow_id}: '{from_state}' is a terminal state")
    if from_state in branches:
        raise NotResumable(
            f"run {state.workflow_id}: '{from_state}' is a branch of a parallel block; "
            "resume from the block"
        )
    if from_state not in state.states:
        raise NotResumable(
            f"run {state.workflow_id}: state '{from_state}' was never executed; "
            f"executed states: {', '.join(steps) or 'none'}"
        )
    return from_state


def prepare_resume(
    state: WorkflowState,
    definition: WorkflowDefinition,
    *,
    from_state: str = "current",
    inputs: dict[str, Any] | None = None,
    allow_changed_definition: bool = False,
) -> WorkflowState:
    """Set ``state`` up to be executed again from ``from_state`` (in memory; the caller saves).

    ``inputs`` are already validated overrides, merged over the run's inputs.

    Raises:
        NotResumable: completed without an explicit ``from_state``, unknown state...
        DefinitionChanged: the definition's sha256 differs and it was not allowed.
    """
    if state.status == RunStatus.COMPLETED and from_state == "current":
        raise NotResumable(
            f"run {state.workflow_id} is completed; resume it with --from previous or --from STATE"
        )
    if (
        state.definition_sha256
        and definition.sha256
        and state.definition_sha256 != definition.sha256
        and not allow_changed_definition
    ):
        raise DefinitionChanged(
            f"workflow '{definition.name}' changed since run {state.workflow_id} began "
            f"(sha256 {state.definition_sha256[:12]} -> {definition.sha256[:12]}); "
            "pass --allow-changed-definition to resume it with the new definition"
        )
    target = resume_target(state, definition, from_state) if state.states else definition.initial
    order = _executed_order(state)
    rewound: list[dict[str, Any]] = []
    if target in state.states:
        cut = order.index(target)
        for name in order[cut:]:
            rewound.append(state.states.pop(name).to_dict())
    state.history.append(
        {
            "event": "resume",
            "at": utcnow(),
            "from": from_state,
            "state": target,
            "previous_status": str(state.status),
            "inputs": dict(inputs or {}),
            "allow_changed_definition": allow_changed_definition,
            "definition_sha256": definition.sha256,
            "rewound": rewound,
        }
    )
    if inputs:
        state.inputs.update(inputs)
    if definition.sha256:
        state.definition_sha256 = definition.sha256
    state.workflow_version = definition.version or state.workflow_version
    state.current_state = target
    state.waiting_for = None  # a wait step resumed is reached afresh
    state.status = RunStatus.PENDING
    state.error = None
    state.completed_at = None
    return state


def mark_cancelled(state: WorkflowState) -> WorkflowState:
    """Record a run as cancelled by someone who is not its executor (nobody executes it).

    Raises:
        RunFinished: the run already completed, failed or was cancelled.
    """
    if state.status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
        raise RunFinished(f"run {state.workflow_id} already ended {state.status}")
    now = utcnow()
    for entry in state.states.values():
        if entry.status in (StepStatus.RUNNING, StepStatus.WAITING):
            entry.status = StepStatus.CANCELLED
            entry.completed_at = now
            entry.error = "cancelled"
    state.waiting_for = None
    state.status = RunStatus.CANCELLED
    state.error = "cancelled"
    state.completed_at = now
    return state
