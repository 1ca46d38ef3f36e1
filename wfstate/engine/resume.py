"""Resuming and cancelling runs: deciding where a run goes on from (docs/workflows.md).

Nothing is silently discarded: every step result a resume rewinds past is moved into
``history`` with the resume's time and options.
"""

from __future__ import annotations

from typing import Any

from wfstate.definitions.model import WorkflowDefinition
from wfstate.engine.loops import keeps_progress
from wfstate.exceptions import DefinitionChanged, NotResumable, RunFinished
from wfstate.state import RunStatus, StepStatus, WorkflowState, parse_time, utcnow


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
    # A loop's body steps are re-run through their loop, as branches through their block.
    branches |= {b for s in definition.states.values() for b in s.body}
    executed = [n for n in _executed_order(state) if n in definition.states]
    # Top-level steps only: a parallel block's branches are re-run through their block.
    steps = [n for n in executed if definition.states[n].type != "terminal" and n not in branches]
    current = state.current_state
    if (
        current is not None
        and current in definition.states
        and definition.states[current].type == "terminal"
    ):
        # The run ended in a terminal: "current" is the last step that ran before it,
        # even one the definition no longer has (refused below, never skipped over).
        before = [
            n
            for n in _executed_order(state)
            if n not in branches
            and n != current
            and (n not in definition.states or definition.states[n].type != "terminal")
        ]
        current = before[-1] if before else definition.initial
    if from_state == "current":
        target = current or definition.initial
        if target not in definition.states:
            # Resumed into a state the definition no longer has (it changed since the
            # run began): refused here, never a run stranded by the executor.
            raise NotResumable(
                f"run {state.workflow_id}: workflow '{definition.name}' has no state "
                f"'{target}' any more (the definition changed since the run began); "
                "resume it with --from STATE"
            )
        return target
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
    owner = next((s.name for s in definition.states.values() if from_state in s.body), None)
    if owner is not None:
        raise NotResumable(
            f"run {state.workflow_id}: '{from_state}' is in the body of loop '{owner}'; "
            "resume from the loop"
        )
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


def _kept_branches(state: WorkflowState, definition: WorkflowDefinition, target: str) -> list[str]:
    """The branches of the parallel block ``target`` that completed in its last
    execution (started after the block did), in the block's order."""
    sdef = definition.states.get(target)
    block = state.states.get(target)
    if sdef is None or sdef.type != "parallel" or block is None:
        return []
    block_start = parse_time(block.started_at)
    kept = []
    for name in sdef.parallel:
        entry = state.states.get(name)
        if entry is None or entry.status != StepStatus.COMPLETED:
            continue
        started = parse_time(entry.started_at)
        if block_start is not None and (started is None or started < block_start):
            continue  # from an earlier pass through the block (a loop), not this one
        kept.append(name)
    return kept


def prepare_resume(
    state: WorkflowState,
    definition: WorkflowDefinition,
    *,
    from_state: str = "current",
    inputs: dict[str, Any] | None = None,
    allow_changed_definition: bool = False,
) -> WorkflowState:
    """Set ``state`` up to be executed again from ``from_state`` (in memory; the caller saves).

    ``inputs`` are already validated overrides, merged over the run's inputs. Resuming
    ``current`` inside a parallel block keeps the branches that completed (listed as
    ``kept`` in the history event; the executor runs only the others). An explicit
    ``--from BLOCK`` runs every branch again.

    Raises:
        NotResumable: completed without an explicit ``from_state``, unknown state, a
            current state the (changed) definition no longer has...
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
    from wfstate.engine.hooks import rewind_end_hooks

    target = resume_target(state, definition, from_state) if state.states else definition.initial
    hooks = rewind_end_hooks(state)
    order = _executed_order(state)
    kept = _kept_branches(state, definition, target) if from_state == "current" else []
    rewound: list[dict[str, Any]] = []
    if target in state.states and not keeps_progress(state, target, from_state):
        cut = order.index(target)
        for name in order[cut:]:
            if name not in kept:
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
            # Completed branches of the interrupted parallel block: not run again.
            "kept": kept,
            **({"hooks": hooks} if hooks else {}),
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
    state.exit_code = None
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
