"""Load-time building and checks for hooks, sub-workflows, operations and awf step keys.

The loader (``loader.py``) calls these from small dispatch lines; everything about
``hooks``, ``call_workflow``, ``operation``, ``outputs``, inline ``on_failure``,
``script_file`` and ``use_template`` lives here (docs/workflows.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import yaml

from wfstate.definitions import awf, templates
from wfstate.definitions.model import HookAction, OutputDef, WorkflowDefinition
from wfstate.exceptions import InvalidDefinition, TemplateError
from wfstate.records import DefinitionProblem

Path_ = tuple[Any, ...]
HookKind = Literal["command", "log", "call"]

# A chain of sub-workflow calls may be at most this deep (the top-level run is 1).
MAX_CALL_DEPTH = 10


class Collector(Protocol):
    def error(self, path: Path_, message: str) -> None: ...

    def warn(self, path: Path_, message: str) -> None: ...

    def has_error(self, path: Path_) -> bool: ...


def _check(out: Collector, path: Path_, text: str, check: Callable[[str], None]) -> str:
    text = awf.normalise_template(text)
    try:
        check(text)
    except TemplateError as exc:
        out.error(path, str(exc))
    return text


def build_hooks(
    out: Collector, path: Path_, raw: Any, events: tuple[str, ...]
) -> dict[str, tuple[HookAction, ...]]:
    """``hooks: {event: [{command|log|call: ...}, ...]}`` -> actions by event."""
    if not isinstance(raw, Mapping) or out.has_error(path):
        return {}
    hooks: dict[str, tuple[HookAction, ...]] = {}
    for event, actions in raw.items():
        epath = (*path, event)
        if event not in events:
            out.warn(epath, f"unknown hook '{event}' is ignored (hooks here: {', '.join(events)})")
            continue
        if not isinstance(actions, list) or out.has_error(epath):
            continue
        built: list[HookAction] = []
        for i, action in enumerate(actions):
            apath = (*epath, i)
            if not isinstance(action, Mapping) or out.has_error(apath):
                continue
            kinds = [k for k in ("command", "log", "call") if action.get(k) is not None]
            if len(kinds) != 1:
                out.error(apath, "a hook action has exactly one of 'command', 'log' or 'call'")
                continue
            for key in action:
                if key not in awf.HOOK_ACTION_KEYS:
                    out.warn((*apath, key), f"unknown hook key '{key}' is ignored")
            kind = kinds[0]
            text = str(action[kind])
            with_: dict[str, Any] = {}
            if kind == "command":
                text = _check(out, (*apath, kind), text, templates.check_command)
            elif kind == "log":
                text = _check(out, (*apath, kind), text, templates.check_text)
            else:
                with_ = {
                    str(k): awf.normalise_template(v) if isinstance(v, str) else v
                    for k, v in dict(action.get("with") or {}).items()
                }
                try:
                    templates.check_value(with_)
                except TemplateError as exc:
                    out.error((*apath, "with"), str(exc))
            built.append(HookAction(kind=cast(HookKind, kind), text=text, with_=with_))
        hooks[str(event)] = tuple(built)
    return hooks


def build_outputs(out: Collector, raw: Any) -> tuple[OutputDef, ...]:
    """awf's ``outputs: [{name, from}]``: ``from`` is an expression over the run."""
    if not isinstance(raw, list):
        return ()
    outputs: list[OutputDef] = []
    for i, item in enumerate(raw):
        path: Path_ = ("outputs", i)
        if not isinstance(item, Mapping) or out.has_error(path):
            continue
        expression = awf.normalise_expression(str(item["from"]))
        try:
            templates.check_expression(expression)
        except TemplateError as exc:
            out.error((*path, "from"), str(exc))
        outputs.append(
            OutputDef(
                name=str(item["name"]),
                from_=expression,
                description=str(item.get("description") or ""),
            )
        )
    return tuple(outputs)


def build_call_workflow(
    out: Collector,
    path: Path_,
    raw: Mapping[str, Any],
    get: Callable[..., Any],
    fields: dict[str, Any],
    template_value: Callable[..., Any],
    duration: Callable[..., float | None],
) -> None:
    """The fields of a ``type: call_workflow`` state."""
    fields["workflow"] = get("workflow")
    fields["call_inputs"] = template_value(out, (*path, "inputs"), dict(get("inputs", {})))
    fields["call_outputs"] = {str(k): str(v) for k, v in dict(get("outputs", {})).items()}
    fields["timeout"] = duration(out, (*path, "timeout"), raw.get("timeout"))
    fields["hooks"] = build_hooks(out, (*path, "hooks"), raw.get("hooks"), awf.STEP_HOOK_EVENTS)


def build_operation(
    out: Collector,
    path: Path_,
    raw: Mapping[str, Any],
    get: Callable[..., Any],
    fields: dict[str, Any],
    template_value: Callable[..., Any],
) -> None:
    """The fields of a ``type: operation`` state; the operation must be registered."""
    from wfstate.engine.operations import available_operations

    name = get("operation")
    fields["operation"] = name
    if name is not None and name not in available_operations():
        known = ", ".join(sorted(available_operations())) or "none"
        out.error((*path, "operation"), f"unknown operation '{name}' (registered: {known})")
    if "inputs" in raw and "with" in raw:
        out.error(path, "an operation takes its arguments in 'inputs' or 'with', not both")
    key = "inputs" if "inputs" in raw else "with"
    fields["with_"] = template_value(out, (*path, key), dict(get(key, {})))
    fields["hooks"] = build_hooks(out, (*path, "hooks"), raw.get("hooks"), awf.STEP_HOOK_EVENTS)


def build_step_extras(
    out: Collector, path: Path_, raw: Mapping[str, Any], fields: dict[str, Any]
) -> None:
    """Step keys beyond command/call: hooks, inline on_failure, script_file."""
    if "hooks" in raw:
        fields["hooks"] = build_hooks(out, (*path, "hooks"), raw["hooks"], awf.STEP_HOOK_EVENTS)


def inline_failure(
    out: Collector, path: Path_, raw: Mapping[str, Any], fields: dict[str, Any]
) -> None:
    """awf's inline ``on_failure: {message, status}``: the run fails with that message
    and exit status, instead of going to a state."""
    value = raw.get("on_failure")
    if not isinstance(value, Mapping) or out.has_error((*path, "on_failure")):
        return
    fields["on_failure"] = None
    message = value.get("message")
    if message is not None:
        fields["failure_message"] = _check(
            out, (*path, "on_failure", "message"), str(message), templates.check_text
        )
    fields["failure_status"] = int(value.get("status", 1))


def script_file_command(
    out: Collector, path: Path_, raw: Mapping[str, Any], base: Path | None
) -> str | None:
    """``script_file: path`` (relative to the workflow file): the script is the command.

    The file is read at load time, so the definition's sha256 does not see its edits;
    its text is a command template like any other.
    """
    value = raw.get("script_file")
    if value is None or out.has_error((*path, "script_file")):
        return None
    if raw.get("command") is not None or raw.get("call") is not None:
        out.error(path, "a step has one of 'command', 'call' or 'script_file'")
        return None
    script = Path(str(value))
    if not script.is_absolute() and base is not None:
        script = base.parent / script
    try:
        return script.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        out.error((*path, "script_file"), f"cannot read script_file {script}: {exc}")
        return None


# --- use_template ------------------------------------------------------------------------

_PARAM = re.compile(r"\{\{\s*\.?parameters\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _substitute(value: Any, params: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return _PARAM.sub(lambda m: str(params.get(m.group(1), m.group(0))), value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    return value


def expand_templates(out: Collector, data: Any, base: Path | None) -> Any:
    """Replace each state's ``use_template: NAME`` by the template's state, merged.

    A template is ``templates/NAME.yaml`` beside the workflow file: ``parameters``
    (a list of ``{name, required, default}``) and ``state`` (a state's keys, where
    ``{{parameters.x}}`` is replaced at load time). The state's own keys win.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("states"), Mapping):
        return data
    states = dict(data["states"])
    changed = False
    for name, raw in data["states"].items():
        if not isinstance(raw, Mapping) or "use_template" not in raw:
            continue
        path: Path_ = ("states", name, "use_template")
        template_name = str(raw["use_template"])
        if base is None:
            out.error(path, "use_template needs a workflow file (templates/ is beside it)")
            continue
        file = base.parent / "templates" / f"{template_name}.yaml"
        try:
            template = yaml.safe_load(file.read_text("utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            out.error(path, f"cannot load template {file}: {exc}")
            continue
        if not isinstance(template, Mapping) or not isinstance(template.get("state"), Mapping):
            out.error(path, f"template {file} has no 'state' mapping")
            continue
        given = dict(raw.get("parameters") or {})
        params: dict[str, Any] = {}
        for param in template.get("parameters") or []:
            pname = str(param.get("name"))
            if pname in given:
                params[pname] = given.pop(pname)
            elif "default" in param:
                params[pname] = param["default"]
            elif param.get("required"):
                out.error(path, f"template '{template_name}' needs parameter '{pname}'")
        for extra in given:
            out.error(path, f"template '{template_name}' has no parameter '{extra}'")
        merged = dict(_substitute(template["state"], params))
        merged.update({k: v for k, v in raw.items() if k not in ("use_template", "parameters")})
        states[name] = merged
        changed = True
    if not changed:
        return data
    return {**data, "states": states}


# --- the call graph across files ---------------------------------------------------------


def check_call_graph(
    definition: WorkflowDefinition, lookup: Callable[[str], WorkflowDefinition | None]
) -> None:
    """Refuse circular calls and chains deeper than ``MAX_CALL_DEPTH`` that the files show.

    Raises:
        InvalidDefinition: naming the chain.
    """

    def calls(d: WorkflowDefinition) -> list[tuple[str, str]]:
        return [(s.name, s.workflow) for s in d.states.values() if s.workflow]

    def walk(d: WorkflowDefinition, chain: list[str], top: str | None) -> None:
        for own_state, child_name in calls(d):
            state = top or own_state
            if child_name in chain:
                raise _call_error(
                    definition,
                    state,
                    "circular sub-workflow call: " + " -> ".join([*chain, child_name]),
                )
            if len(chain) + 1 > MAX_CALL_DEPTH:
                raise _call_error(
                    definition,
                    state,
                    f"sub-workflow calls nest deeper than {MAX_CALL_DEPTH}: "
                    + " -> ".join([*chain, child_name]),
                )
            child = lookup(child_name)
            if child is not None:
                walk(child, [*chain, child_name], state)

    if calls(definition):
        walk(definition, [definition.name], None)


def _call_error(definition: WorkflowDefinition, state: str, message: str) -> InvalidDefinition:
    file = str(definition.path) if definition.path else definition.name
    line = definition.states[state].line if state in definition.states else 0
    error: DefinitionProblem = {"file": file, "line": line, "state": state, "message": message}
    return InvalidDefinition(
        f"invalid workflow definition {file}:\n  {file}:{line}: state '{state}': {message}",
        errors=[error],
        warnings=list(definition.warnings),
        path=file,
        workflow_name=definition.name,
    )
