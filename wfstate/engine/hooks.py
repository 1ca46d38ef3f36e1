"""Workflow and step hooks (docs/workflows.md, "Hooks"), with awf's semantics.

Workflow hooks: ``workflow_start`` (a failure aborts the run, as in awf), then one of
``workflow_end``, ``workflow_error`` or ``workflow_cancel``; step hooks: ``pre`` and
``post``. A hook is a list of actions run in order: ``command`` (shell, its words
escaped like a step's), ``log`` (a line in the ``wfstate.hooks`` logger) or ``call``
(a Python callable ``fn(ctx, **with)``). Failures other than ``workflow_start``'s are
recorded as warnings in the state (``warnings``), never failing the run.

Once per event, across crashes: each action's result is checkpointed (durably) as
soon as it ends, in ``state.hooks[event]`` for workflow hooks and in the step result's
``hooks`` for step hooks. An action already recorded is not run again when the run is
recovered. A step re-run after a crash keeps the hook records of its interrupted run
(they are carried over from the resume's ``history`` entry); a step re-run by an
explicit ``resume --from`` of a step that had ended is a new event and runs its hooks
again. An action interrupted half-way by a crash runs again (at least once, like steps).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wfstate import secrets
from wfstate.definitions.model import HookAction, StateDef
from wfstate.definitions.templates import render_command, render_text, render_value
from wfstate.engine._values import _secret_values
from wfstate.engine.events import ProgressEvent
from wfstate.engine.steps import StepContext, run_call, run_command
from wfstate.exceptions import WFStateError
from wfstate.state import StepResult, WorkflowState, utcnow

if TYPE_CHECKING:
    from wfstate.engine.executor import Executor

logger = logging.getLogger("wfstate.hooks")

END_EVENTS = ("workflow_end", "workflow_error", "workflow_cancel")

# The steps whose interrupted hook records an executor already carried over: only the
# first execution of a step after a crash continues the interrupted one (a step that a
# transition brings back later is a new event).
_carried: weakref.WeakKeyDictionary[Executor, set[str]] = weakref.WeakKeyDictionary()


def _never() -> bool:
    return False


def _run_action(
    executor: Executor,
    action: HookAction,
    context: dict[str, Any],
    should_stop: Callable[[], bool],
    state_name: str,
) -> tuple[bool, str | None, str | None]:
    """(ok, output, error) of one action, with secret values masked (as a step's are)."""
    state = executor._state
    assert state is not None
    hidden = _secret_values(state, executor.definition)
    try:
        if action.kind == "log":
            message = secrets.mask(render_text(action.text, context), hidden)
            logger.info("[%s %s] %s", state.workflow_name, state.workflow_id, message)
            return True, message, None
        if action.kind == "command":
            outcome = run_command(
                render_command(action.text, context),
                cwd=None,
                env={},
                timeout=None,
                should_stop=should_stop,
            )
        else:
            ctx = StepContext(
                workflow_id=state.workflow_id,
                workflow_name=state.workflow_name,
                state_name=state_name,
                inputs=state.inputs,
                states=context["states"],
                attempt=1,
                should_stop=should_stop,
            )
            outcome = run_call(
                action.text,
                render_value(dict(action.with_), context),
                ctx,
                timeout=None,
                should_stop=should_stop,
            )
    except WFStateError as exc:
        return False, None, secrets.mask(str(exc), hidden)
    output = outcome.output
    if output is not None and not isinstance(output, str | int | float | bool | list | dict):
        output = repr(output)
    return outcome.ok, secrets.mask(output, hidden), secrets.mask(outcome.error, hidden)


def run_hooks(
    executor: Executor,
    actions: tuple[HookAction, ...],
    records: list[dict[str, Any]],
    *,
    event: str,
    state_name: str | None = None,
    extra_context: dict[str, Any] | None = None,
    fail_fast: bool = False,
    should_stop: Callable[[], bool] = _never,
) -> str | None:
    """Run the actions not yet in ``records`` (appending to it, checkpointing each).

    Returns the first failure's message, or None. With ``fail_fast`` the first failure
    stops the list (``workflow_start``); otherwise each failure becomes a warning.
    """
    state = executor._state
    assert state is not None
    first_error: str | None = None
    for index, action in enumerate(actions):
        if index < len(records):
            continue  # ran before a crash: once per event
        context = executor._context()
        context["workflow"] = dict(context["workflow"])
        if extra_context:
            context.update(extra_context)
        started = utcnow()
        ok, output, error = _run_action(executor, action, context, should_stop, state_name or "")
        where = f"{event} hook" + (f" of state '{state_name}'" if state_name else "")
        record = {
            "kind": action.kind,
            "action": action.text,
            "status": "completed" if ok else "failed",
            "output": output,
            "error": error,
            "started_at": started,
            "completed_at": utcnow(),
        }
        with executor._lock:
            records.append(record)
            if not ok:
                message = f"{where} #{index + 1} ({action.kind}) failed: {error}"
                first_error = first_error or message
                if not fail_fast:
                    state.warnings.append(message)
            executor._checkpoint()
        hook_event: ProgressEvent = {
            "event": "hook",
            "hook": event,
            "kind": action.kind,
            "status": "completed" if ok else "failed",
            "output": output,
            "error": error,
        }
        if state_name:
            hook_event["state"] = state_name
        executor._emit(hook_event)
        if not ok and fail_fast:
            return first_error
    return first_error


def workflow_hook(
    executor: Executor, event: str, *, error: str | None = None, fail_fast: bool = False
) -> str | None:
    """Run the workflow's ``event`` hook once for this run; its first failure, or None."""
    state = executor._state
    assert state is not None
    actions = executor.definition.hooks.get(event, ())
    if not actions:
        return None
    with executor._lock:
        records = state.hooks.setdefault(event, [])
    extra = None
    if error is not None:
        extra = {"error": {"message": error, "state": state.current_state, "type": "execution"}}
    return run_hooks(
        executor, actions, records, event=event, extra_context=extra, fail_fast=fail_fast
    )


def step_hook(
    executor: Executor,
    sdef: StateDef,
    entry: StepResult,
    event: str,
    should_stop: Callable[[], bool],
) -> None:
    """Run a step's ``pre`` or ``post`` hook once for this execution of the step."""
    actions = sdef.hooks.get(event, ())
    if not actions:
        return
    with executor._lock:
        if entry.hooks is None:
            entry.hooks = _carried_over(executor, sdef.name)
        records = entry.hooks.setdefault(event, [])
    run_hooks(
        executor,
        actions,
        records,
        event=event,
        state_name=sdef.name,
        should_stop=should_stop if event == "pre" else _never,
    )


def _carried_over(executor: Executor, name: str) -> dict[str, Any]:
    """Hook records of this step's run that a crash interrupted (recovered, not rewound
    on purpose): the resume that follows a crash moved them to ``history``."""
    state = executor._state
    assert state is not None
    done = _carried.setdefault(executor, set())
    if not state.history or name in done:
        return {}
    done.add(name)
    last = state.history[-1]
    if last.get("previous_status") not in ("running", "pending") or last.get("from") != "current":
        return {}
    for rewound in last.get("rewound") or ():
        if rewound.get("name") == name and isinstance(rewound.get("hooks"), dict):
            return {k: list(v) for k, v in rewound["hooks"].items()}
    return {}


def rewind_end_hooks(state: WorkflowState) -> dict[str, Any]:
    """A run resumed after it ended will end again: its end hooks are new events.

    Returns the records moved out (for the resume's ``history`` entry).
    """
    if not state.status.is_final:
        return {}
    moved = {event: state.hooks.pop(event) for event in END_EVENTS if event in state.hooks}
    start = state.hooks.get("workflow_start") or []
    if any(record.get("status") == "failed" for record in start):
        moved["workflow_start"] = state.hooks.pop("workflow_start")  # it aborted the run
    return moved
