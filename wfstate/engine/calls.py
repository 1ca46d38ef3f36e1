"""``type: call_workflow`` steps: a child run of another workflow (docs/workflows.md).

A child is a run of its own: its own state file and run lock, ``parent_run_id`` naming
the parent and ``started_by = {"kind": "parent", ...}``; the parent's step result
records ``child_run_id``. It runs in the parent's executor process (in-process, in the
parent's thread), so:

- the parent records ``child_run_id`` durably *before* the child's file exists, so a
  crash can never start a second child: a resumed parent finds the id (in its step
  result, or in the ``history`` entry its resume moved it to) and resumes that child;
- a completed child is never run again: its outputs are taken as they are;
- recovering a crashed parent resumes the child first (its run lock is free, since
  its executor died with the parent's), then goes on;
- cancelling the parent stops the child: the child's ``should_stop`` asks the
  parent's, which polls the parent's cancel request; ``runs.cancel_run`` also leaves a
  request for the child.

Depth is at most ``MAX_CALL_DEPTH`` (the top-level run is 1) and a workflow may not
call one already in its chain; both are refused when loading where the files show it
(``wfstate.definitions.calls.check_call_graph``), else here at run time.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wfstate.definitions.calls import MAX_CALL_DEPTH
from wfstate.definitions.inputs import validate_inputs
from wfstate.definitions.model import StateDef, WorkflowDefinition
from wfstate.definitions.templates import render_value
from wfstate.engine.events import ProgressEvent
from wfstate.engine.processes import reap_orphans
from wfstate.engine.resume import prepare_resume
from wfstate.engine.steps import AttemptResult
from wfstate.exceptions import WFStateError
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, new_workflow_id

if TYPE_CHECKING:
    from wfstate.engine.executor import Executor


def call_chain(state: WorkflowState, definition: WorkflowDefinition) -> tuple[str, ...]:
    """The workflow names from the top-level run down to this one."""
    started_by = state.started_by or {}
    if started_by.get("kind") == "parent" and isinstance(started_by.get("chain"), list):
        return tuple(str(n) for n in started_by["chain"])
    return (definition.name,)


def collect_outputs(definition: WorkflowDefinition, context: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the workflow's ``outputs`` over the finished run.

    Raises:
        TemplateError: an output's ``from`` does not evaluate.
    """
    return {
        output.name: render_value("{{ " + output.from_ + " }}", context)
        for output in definition.outputs
    }


# The steps whose previous child an executor already took up: only the first execution
# of a step after a resume continues the interrupted one (a step that a transition
# brings back later starts a new child).
_taken_up: weakref.WeakKeyDictionary[Executor, set[str]] = weakref.WeakKeyDictionary()


def _previous_child(executor: Executor, state: WorkflowState, name: str) -> str | None:
    """The child of this step's interrupted or failed execution, moved to ``history``
    by the resume that led here; None if the step had completed (a deliberate re-run)."""
    taken = _taken_up.setdefault(executor, set())
    if not state.history or name in taken:
        return None
    taken.add(name)
    last = state.history[-1]
    for rewound in last.get("rewound") or ():
        if rewound.get("name") == name and rewound.get("child_run_id"):
            if rewound.get("status") == str(StepStatus.COMPLETED):
                return None
            return str(rewound["child_run_id"])
    return None


def run_call_workflow(
    executor: Executor, sdef: StateDef, entry: StepResult, should_stop: Callable[[], bool]
) -> AttemptResult:
    """Run (or resume, or take the result of) the step's child run."""
    parent = executor._state
    assert parent is not None
    assert sdef.workflow is not None
    if executor.resolve is None:
        return AttemptResult(ok=False, error="sub-workflows need a definition resolver")
    chain = executor.call_chain or call_chain(parent, executor.definition)
    if sdef.workflow in chain:
        return AttemptResult(
            ok=False,
            error="circular sub-workflow call: " + " -> ".join([*chain, sdef.workflow]),
        )
    if len(chain) + 1 > MAX_CALL_DEPTH:
        return AttemptResult(
            ok=False,
            error=f"sub-workflow calls nest deeper than {MAX_CALL_DEPTH}: "
            + " -> ".join([*chain, sdef.workflow]),
        )
    store = executor.store
    try:
        child_def = executor.resolve(sdef.workflow)
        inputs = render_value(dict(sdef.call_inputs), executor._context())
        values = validate_inputs(child_def, inputs, coerce_strings=True)
    except WFStateError as exc:
        return AttemptResult(ok=False, error=f"sub-workflow '{sdef.workflow}': {exc}")

    child_id = (
        entry.child_run_id or _previous_child(executor, parent, sdef.name) or new_workflow_id()
    )
    if entry.child_run_id != child_id:
        # Durable before the child exists: a crash from here on finds this id.
        with executor._lock:
            entry.child_run_id = child_id
            executor._checkpoint()
    if not store.exists(child_id):
        store.save(
            WorkflowState.new(
                child_def.name,
                inputs=values,
                workflow_version=child_def.version,
                definition_sha256=child_def.sha256,
                workflow_id=child_id,
                parent_run_id=parent.workflow_id,
                started_by={
                    "kind": "parent",
                    "workflow_id": parent.workflow_id,
                    "workflow_name": parent.workflow_name,
                    "state": sdef.name,
                    "depth": len(chain) + 1,
                    "chain": [*chain, child_def.name],
                },
            )
        )
    deadline = time.monotonic() + sdef.timeout if sdef.timeout else None

    def timed_out() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def child_stop() -> bool:
        return should_stop() or timed_out()

    def progress(event: ProgressEvent) -> None:
        inner = event.get("state")
        forwarded = event.copy()
        forwarded["state"] = f"{sdef.name}/{inner}" if inner else sdef.name
        forwarded["run"] = child_id
        executor._emit(forwarded)

    from wfstate.engine.executor import Executor as ExecutorClass

    try:
        with store.run_lock(child_id):
            child = store.load(child_id)
            if child.status != RunStatus.COMPLETED:
                reap_orphans(child)
                if child.status != RunStatus.PENDING:
                    was = child.status
                    prepare_resume(child, child_def, from_state="current")
                    child.history[-1]["event"] = (
                        "recover" if was == RunStatus.RUNNING else "resume_by_parent"
                    )
                store.clear_cancel(child_id)
                child_executor = ExecutorClass(
                    store,
                    child_def,
                    listeners=executor.listeners,
                    progress=progress,
                    max_inline_output=executor.max_inline_output,
                    resolve=executor.resolve,
                    parent_stop=child_stop,
                    call_chain=(*chain, child_def.name),
                )
                try:
                    child = child_executor.execute(child)
                finally:
                    store.clear_cancel(child_id)
    except WFStateError as exc:
        return AttemptResult(ok=False, error=f"sub-workflow run {child_id}: {exc}")

    label = f"sub-workflow '{child_def.name}' (run {child_id})"
    if child.status == RunStatus.CANCELLED:
        if should_stop():
            return AttemptResult(ok=False, error="cancelled", cancelled=True)
        if timed_out():
            return AttemptResult(
                ok=False, error=f"{label} timed out after {sdef.timeout:g}s", timed_out=True
            )
        return AttemptResult(ok=False, error=f"{label} was cancelled")
    if child.status != RunStatus.COMPLETED:
        return AttemptResult(ok=False, error=f"{label} {child.status}: {child.error}")
    if not sdef.call_outputs:
        return AttemptResult(ok=True, output=dict(child.outputs))
    missing = [name for name in sdef.call_outputs if name not in child.outputs]
    if missing:
        known = ", ".join(sorted(child.outputs)) or "none"
        return AttemptResult(
            ok=False, error=f"{label} has no output {', '.join(missing)} (its outputs: {known})"
        )
    return AttemptResult(
        ok=True, output={alias: child.outputs[name] for name, alias in sdef.call_outputs.items()}
    )
