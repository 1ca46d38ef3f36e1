"""Load-time building and checks of loop states: ``for_each`` and ``while`` (docs/workflows.md).

A loop names its ``body``: the steps of one iteration, run in order. Routing inside the
body follows awf: a body step whose ``on_success`` (or ``on_failure``) names the loop
ends its iteration, one that names another body step jumps there, one that names a
state outside the body leaves the loop. ``on_complete`` is the loop's ``on_success``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from wfstate.definitions import awf, templates
from wfstate.definitions.model import StateDef
from wfstate.exceptions import TemplateError

if TYPE_CHECKING:
    from wfstate.definitions.loader import _Collector

LOOP_TYPES = ("for_each", "while")
DEFAULT_MAX_ITERATIONS = 100
# No loop runs more iterations than this, whatever max_iterations says (awf's cap too).
MAX_ITERATIONS_CAP = 10_000

Path_ = tuple[Any, ...]


def _expression(out: _Collector, path: Path_, value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = awf.normalise_expression(value)
    try:
        templates.check_expression(text)
    except TemplateError as exc:
        out.error(path, str(exc))
    return text


def build_loop(
    out: _Collector,
    path: Path_,
    raw: Mapping[str, Any],
    get: Callable[..., Any],
    fields: dict[str, Any],
) -> StateDef:
    """The StateDef of a ``for_each`` or ``while`` state (errors go to ``out``)."""
    from wfstate.definitions.loader import _build_transitions, _template_value

    kind = fields["type"]
    on_complete, on_success = get("on_complete"), get("on_success")
    if on_complete is not None and on_success is not None and on_complete != on_success:
        out.error(
            (*path, "on_complete"),
            "on_complete and on_success are the same key for a loop; give one of them",
        )
    fields["on_success"] = on_complete if on_complete is not None else on_success
    fields["on_failure"] = get("on_failure")
    fields["transitions"] = tuple(_build_transitions(out, path, get("transitions", [])))
    fields["body"] = tuple(str(b) for b in get("body", ()) if isinstance(b, str))
    if kind == "for_each":
        items = get("items")
        if isinstance(items, str | list):
            items = _template_value(out, (*path, "items"), items)
        fields["items"] = items
        fields["max_concurrent"] = get("max_concurrent")
    else:
        fields["while_"] = _expression(out, (*path, "while"), get("while"))
    break_when, break_condition = get("break_when"), get("break_condition")
    if break_when is not None and break_condition is not None:
        out.error((*path, "break_condition"), "give break_when or break_condition, not both")
    key = "break_when" if break_when is not None else "break_condition"
    fields["break_when"] = _expression(out, (*path, key), get(key))
    limit = get("max_iterations", DEFAULT_MAX_ITERATIONS)
    if isinstance(limit, str):
        limit = _template_value(out, (*path, "max_iterations"), limit)
    fields["max_iterations"] = limit
    return StateDef(**fields)


def body_owners(built: Mapping[str, StateDef]) -> dict[str, str]:
    """Each body step -> the loop whose body it is."""
    owners: dict[str, str] = {}
    for state in built.values():
        for step in state.body:
            owners.setdefault(step, state.name)
    return owners


def check_loops(out: _Collector, built: Mapping[str, StateDef], names: set[str]) -> None:
    """Body steps exist, are steps or loops, belong to one loop; no loop in its own body."""
    owners: dict[str, str] = {}
    for state in built.values():
        if state.type not in LOOP_TYPES:
            continue
        path: Path_ = ("states", state.name)
        if state.max_concurrent is not None and state.type != "for_each":
            out.error((*path, "max_concurrent"), "max_concurrent applies to for_each loops only")
        for i, step in enumerate(state.body):
            bpath = (*path, "body", i)
            if step not in names:
                out.error(bpath, f"body step '{step}' does not exist")
                continue
            if step == state.name:
                out.error(bpath, "a loop cannot be in its own body")
                continue
            kind = built[step].type if step in built else None
            if kind is not None and kind not in ("step", *LOOP_TYPES):
                out.error(
                    bpath, f"body step '{step}' is a {kind} state; a body holds steps and loops"
                )
            if step in owners and owners[step] != state.name:
                out.error(
                    bpath,
                    f"body step '{step}' is already in the body of loop '{owners[step]}'; "
                    "a step belongs to one loop",
                )
            owners.setdefault(step, state.name)
    # A loop nested in itself through another loop's body would never end.
    for name in owners:
        seen, current = {name}, owners.get(name)
        while current is not None:
            if current in seen:
                out.error(("states", name), f"loop '{current}' is nested in itself")
                break
            seen.add(current)
            current = owners.get(current)
