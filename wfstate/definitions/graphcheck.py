"""Pass 3 of loading, on the built states: the graph checks (targets that exist,
parallel branches that can be branches, a terminal state, loops' bodies, every state
reachable from ``initial``, no cycle without a way out). Every problem is reported
through the loader's collector, with its file, line and state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from wfstate.definitions.loops import body_owners, check_loops
from wfstate.definitions.model import StateDef

if TYPE_CHECKING:
    from wfstate.definitions.loader import Path_, _Collector


def _opaque_targets(raw: Any, names: set[str]) -> set[str]:
    """State names mentioned anywhere in a state we could not build (an awf loop...)."""
    found: set[str] = set()
    if isinstance(raw, str):
        if raw in names:
            found.add(raw)
    elif isinstance(raw, Mapping):
        for value in raw.values():
            found |= _opaque_targets(value, names)
    elif isinstance(raw, list):
        for value in raw:
            found |= _opaque_targets(value, names)
    return found


def check_graph(
    out: _Collector,
    initial: Any,
    built: dict[str, StateDef],
    raw_states: Mapping[str, Any],
) -> None:
    names = set(raw_states) - {"initial"}
    opaque = names - set(built)

    if isinstance(initial, str) and initial not in names:
        out.error(("states", "initial"), f"initial state '{initial}' does not exist")

    for state in built.values():
        path: Path_ = ("states", state.name)
        for key in ("on_success", "on_failure", "on_timeout"):
            target = getattr(state, key)
            if target is not None and target not in names:
                out.error((*path, key), f"{key} target '{target}' does not exist")
        for i, t in enumerate(state.transitions):
            if t.goto not in names:
                out.error(
                    (*path, "transitions", i, "goto"),
                    f"transition target '{t.goto}' does not exist",
                )
        for i, branch in enumerate(state.parallel):
            bpath = (*path, "parallel", i)
            if branch not in names:
                out.error(bpath, f"parallel branch '{branch}' does not exist")
            elif branch == state.name:
                out.error(bpath, "a parallel block cannot be its own branch")
            elif branch in built and built[branch].type not in (
                "step",
                "call_workflow",
                "operation",
            ):
                out.error(
                    bpath,
                    f"parallel branch '{branch}' is a {built[branch].type} state; "
                    "branches must be steps",
                )

    if not any(s.type == "terminal" for s in built.values()) and not opaque:
        out.error(("states",), "no terminal state: add a state with type: terminal")
    check_loops(out, built, names)
    # A body step with no route of its own goes back to its loop (the next body step,
    # or the iteration's end).
    owners = body_owners(built)

    def routes(name: str) -> set[str]:
        if name in built:
            back = {owners[name]} if name in owners else set()
            return {t for t in built[name].targets() if t in names} | back
        return _opaque_targets(raw_states.get(name), names) - {name}

    # Reachability: routes from the initial state; a parallel block's branches are
    # reached too, but their own on_* are ignored by the engine, so not followed.
    if not isinstance(initial, str) or initial not in names:
        return
    routed: set[str] = set()
    todo = [initial]
    while todo:
        name = todo.pop()
        if name in routed:
            continue
        routed.add(name)
        todo.extend(routes(name) - routed)
    branches = {b for n in routed if n in built for b in built[n].parallel if b in names}
    for name in sorted(names - routed - branches, key=lambda n: out._locate(("states", n))[0]):
        out.error(
            ("states", name), f"unreachable: no route leads here from the initial state '{initial}'"
        )

    # Every state the run can be in must be able to end: walk back from the terminals.
    # States we could not build are given the benefit of the doubt (already errors).
    can_end = {n for n in names if n in opaque or built[n].type == "terminal"}
    changed = True
    while changed:
        changed = False
        for name in routed - can_end:
            if routes(name) & can_end:
                can_end.add(name)
                changed = True
    if not any(built.get(n) and built[n].type == "terminal" for n in names) and not opaque:
        return  # already reported: no terminal at all
    for name in sorted(routed - can_end):
        state = built[name]
        if not state.targets() and name not in owners:
            message = (
                f"state '{name}' has no on_success, on_failure or transitions, "
                "so the run cannot go on after it"
            )
        else:
            message = f"state '{name}' cannot reach a terminal state (a cycle with no way out)"
        out.error(("states", name), message)
