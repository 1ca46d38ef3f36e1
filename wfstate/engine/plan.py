"""Dry runs: what a run would do, without doing any of it (docs/workflows.md, "Dry run").

:func:`plan` validates the inputs, renders every template that can be rendered before
the run starts (those that name ``inputs`` and ``workflow`` only; one that needs a
step's result says so), and lists the states in the order the routes reach them, with
their hooks, parallel branches and sub-workflows (planned recursively, their inputs
validated). It writes no file, takes no lock and runs no command or callable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wfstate.definitions.calls import MAX_CALL_DEPTH
from wfstate.definitions.inputs import validate_inputs
from wfstate.definitions.model import HookAction, StateDef, WorkflowDefinition
from wfstate.definitions.templates import render_command, render_text, render_value
from wfstate.exceptions import WFStateError

Resolve = Callable[[str], WorkflowDefinition]

_LATER = "(rendered when the run gets there: {error})"


def _context(definition: WorkflowDefinition, inputs: dict[str, Any]) -> dict[str, Any]:
    workflow = {"id": "(dry run)", "name": definition.name, "version": definition.version}
    workflow.update({"ID": "(dry run)", "Name": definition.name, "Version": definition.version})
    return {"inputs": dict(inputs), "states": {}, "workflow": workflow}


def _try(render: Callable[[], Any]) -> tuple[Any, bool]:
    """(value, rendered): a template needing what only the run knows stays a template."""
    try:
        return render(), True
    except WFStateError as exc:
        return _LATER.format(error=exc), False


def _hooks(
    hooks: dict[str, tuple[HookAction, ...]], context: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for event, actions in hooks.items():
        items = []
        for action in actions:
            if action.kind == "command":
                text, _ = _try(lambda a=action: render_command(a.text, context))  # type: ignore[misc]
            elif action.kind == "log":
                text, _ = _try(lambda a=action: render_text(a.text, context))  # type: ignore[misc]
            else:
                text = action.text
            items.append({"kind": action.kind, "action": text})
        out[event] = items
    return out


def _order(definition: WorkflowDefinition) -> list[str]:
    """States in the order the routes reach them from the initial state (breadth first),
    each parallel block followed by its branches."""
    seen: list[str] = []
    todo = [definition.initial]
    while todo:
        name = todo.pop(0)
        if name in seen or name not in definition.states:
            continue
        seen.append(name)
        sdef = definition.states[name]
        todo[0:0] = [b for b in sdef.parallel if b not in seen]
        todo.extend(t for t in sdef.targets() if t not in seen)
    return seen


def _state(
    sdef: StateDef,
    context: dict[str, Any],
    resolve: Resolve | None,
    chain: tuple[str, ...],
) -> dict[str, Any]:
    item: dict[str, Any] = {"name": sdef.name, "type": sdef.type}
    if sdef.command is not None:
        item["command"], _ = _try(lambda: render_command(str(sdef.command), context))
        if sdef.dir:
            item["dir"], _ = _try(lambda: render_text(str(sdef.dir), context))
    if sdef.call is not None:
        item["call"] = sdef.call
    if sdef.operation is not None:
        item["operation"] = sdef.operation
    if sdef.with_ and (sdef.call or sdef.operation):
        item["with"], _ = _try(lambda: render_value(dict(sdef.with_), context))
    if sdef.timeout is not None:
        item["timeout"] = sdef.timeout
    if sdef.retry is not None:
        item["retry"] = {"max_attempts": sdef.retry.max_attempts, "backoff": sdef.retry.backoff}
    if sdef.parallel:
        item["parallel"] = list(sdef.parallel)
        item["strategy"] = sdef.strategy
    if sdef.type == "terminal":
        item["status"] = sdef.status
        if sdef.message:
            item["message"], _ = _try(lambda: render_text(str(sdef.message), context))
    if sdef.hooks:
        item["hooks"] = _hooks(sdef.hooks, context)
    routes: dict[str, Any] = {
        "on_success": sdef.on_success,
        "on_failure": sdef.on_failure,
        "transitions": [{"when": t.when, "goto": t.goto} for t in sdef.transitions],
    }
    if sdef.failure_message is not None or sdef.failure_status is not None:
        routes["on_failure"] = {"message": sdef.failure_message, "status": sdef.failure_status}
    if sdef.type != "terminal":
        item["routes"] = {k: v for k, v in routes.items() if v}
    if sdef.workflow is not None:
        item["workflow"] = sdef.workflow
        item["sub_workflow"] = _child(sdef, context, resolve, chain)
    return item


def _child(
    sdef: StateDef, context: dict[str, Any], resolve: Resolve | None, chain: tuple[str, ...]
) -> dict[str, Any]:
    name = str(sdef.workflow)
    if name in chain:
        return {"error": "circular sub-workflow call: " + " -> ".join([*chain, name])}
    if len(chain) + 1 > MAX_CALL_DEPTH:
        return {"error": f"sub-workflow calls nest deeper than {MAX_CALL_DEPTH}"}
    if resolve is None:
        return {"error": "no definition resolver"}
    try:
        child = resolve(name)
    except WFStateError as exc:
        return {"error": str(exc)}
    inputs: dict[str, Any] = {}
    rendered = True
    for key, value in sdef.call_inputs.items():
        inputs[key], ok = _try(lambda v=value: render_value(v, context))  # type: ignore[misc]
        rendered = rendered and ok
    if not rendered:
        # Its inputs need earlier results: plan it with what can be known now.
        return {**_plan(child, {}, resolve, (*chain, name), validate=False), "inputs": inputs}
    try:
        return _plan(child, inputs, resolve, (*chain, name), coerce=True)
    except WFStateError as exc:
        return {"error": str(exc)}


def _plan(
    definition: WorkflowDefinition,
    inputs: dict[str, Any],
    resolve: Resolve | None,
    chain: tuple[str, ...],
    *,
    coerce: bool = False,
    validate: bool = True,
) -> dict[str, Any]:
    values = validate_inputs(definition, inputs, coerce_strings=coerce) if validate else inputs
    context = _context(definition, values)
    return {
        "workflow": definition.name,
        "version": definition.version,
        "inputs": values,
        "hooks": _hooks(definition.hooks, context),
        "states": [
            _state(definition.states[name], context, resolve, chain) for name in _order(definition)
        ],
        "outputs": [{"name": o.name, "from": o.from_} for o in definition.outputs],
        "warnings": list(definition.warnings),
    }


def plan(
    definition: WorkflowDefinition,
    inputs: dict[str, Any],
    *,
    resolve: Resolve | None = None,
    coerce_strings: bool = False,
) -> dict[str, Any]:
    """The plan of a run of ``definition`` with ``inputs`` (JSON-able); nothing is written.

    Raises:
        InvalidInputs: the inputs do not validate.
    """
    return {
        "dry_run": True,
        **_plan(definition, inputs, resolve, (definition.name,), coerce=coerce_strings),
    }


def format_plan(plan_: dict[str, Any], indent: str = "") -> list[str]:
    """The plan as lines for a terminal."""
    lines = [f"{indent}workflow {plan_.get('workflow')} {plan_.get('version') or ''}".rstrip()]
    if "error" in plan_:
        return [*lines, f"{indent}  error: {plan_['error']}"]
    for key, value in (plan_.get("inputs") or {}).items():
        lines.append(f"{indent}  input {key} = {value!r}")
    for event, actions in (plan_.get("hooks") or {}).items():
        for action in actions:
            lines.append(f"{indent}  hook {event}: {action['kind']} {action['action']}")
    for number, state in enumerate(plan_.get("states") or [], 1):
        what = state.get("command") or state.get("call") or state.get("operation") or ""
        if state["type"] == "parallel":
            what = f"branches {', '.join(state['parallel'])} ({state['strategy']})"
        elif state["type"] == "call_workflow":
            what = f"calls {state['workflow']}"
        elif state["type"] == "terminal":
            what = state["status"]
        lines.append(f"{indent}  {number}. {state['name']} [{state['type']}] {what}".rstrip())
        for event, actions in (state.get("hooks") or {}).items():
            for action in actions:
                lines.append(f"{indent}       hook {event}: {action['kind']} {action['action']}")
        routes = state.get("routes") or {}
        for key in ("on_success", "on_failure"):
            if key in routes:
                lines.append(f"{indent}       {key} -> {routes[key]}")
        for t in routes.get("transitions", []):
            lines.append(f"{indent}       when {t['when'] or 'always'} -> {t['goto']}")
        if "sub_workflow" in state:
            lines.extend(format_plan(state["sub_workflow"], indent + "       "))
    return lines
