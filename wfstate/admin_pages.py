"""The admin's run page: everything it shows, gathered from the run's state file.

``wfstate.admin`` renders what :func:`run_page` returns with the
``wfstate/admin/run_detail.html`` template; the drawings in it (the workflow graph and
the step timeline) come from ``wfstate.graph``. The page reads the state file, the run
lock and the current definition, never the index row: the file is the truth, and a
page for a run the index got wrong still shows the run.
"""

from __future__ import annotations

from typing import Any

from wfstate.definitions import get_registry
from wfstate.exceptions import WFStateError
from wfstate.formatting import human_duration, pretty_json
from wfstate.graph import graph_from_states, render_svg, timeline
from wfstate.state import RunStatus, parse_time
from wfstate.stores import get_store


def _definition_graph(workflow_name: str) -> tuple[dict[str, Any] | None, str]:
    """The current definition's graph, or None with the reason."""
    try:
        definition = get_registry().get(workflow_name)
    except Exception as exc:  # missing or invalid: drawn from the file
        return None, str(exc) or type(exc).__name__
    return definition.graph(), ""


def run_page(workflow_id: str) -> dict[str, Any]:
    """Everything the run page shows, read from the run's file.

    Raises:
        Nothing from the store: a corrupt or missing file comes back as ``error`` (and
        ``error_code``), an unreadable lock as no ``owner``, a missing or invalid
        definition as a graph drawn from the file's states, so the page can say so.
    """
    store = get_store()
    page: dict[str, Any] = {"workflow_id": workflow_id, "state": None, "error": None}
    try:
        owner = store.run_lock_owner(workflow_id)
    except WFStateError:
        owner = None
    page["owner"] = owner
    page["owner_since"] = parse_time(owner.get("since")) if owner and owner.get("since") else None
    try:
        state = store.load(workflow_id)
    except WFStateError as exc:
        page["error"] = str(exc)
        page["error_code"] = exc.code
        return page
    page["state"] = state
    page["started"] = parse_time(state.started_at)
    page["updated"] = parse_time(state.updated_at)
    page["completed"] = parse_time(state.completed_at)
    page["duration"] = human_duration(state.duration_ms())
    page["inputs"] = [(k, pretty_json(v)) for k, v in state.inputs.items()]

    graph, missing = _definition_graph(state.workflow_name)
    page["graph_source"] = "definition" if graph is not None else "states"
    page["graph_missing_reason"] = missing
    if graph is None:
        graph = graph_from_states(state)
    statuses = {name: str(step.status) for name, step in state.states.items()}
    page["graph_svg"] = render_svg(
        graph, statuses, state.current_state, title=f"{state.workflow_name} {workflow_id}"
    )
    page["timeline"] = timeline(state)

    outputs_dir = store.outputs_dir
    steps = []
    for step in state.states.values():
        side = None
        if step.output_truncated and (where := outputs_dir(workflow_id)) is not None:
            side = str(where)
        steps.append(
            {
                "step": step,
                "output": pretty_json(step.output),
                "stderr": step.stderr or "",
                "duration": human_duration(step.duration_ms),
                "started": parse_time(step.started_at),
                "side_files": side,
            }
        )
    page["steps"] = steps
    page["history"] = [
        {
            "event": entry.get("event", ""),
            "at": parse_time(entry.get("at")) if isinstance(entry.get("at"), str) else None,
            "summary": ", ".join(
                f"{k}={v}"
                for k, v in entry.items()
                if k not in ("event", "at", "rewound") and v not in (None, "", {}, [])
            ),
            "rewound": [r.get("name") for r in entry.get("rewound") or [] if isinstance(r, dict)],
            "raw": pretty_json(entry),
        }
        for entry in state.history
        if isinstance(entry, dict)
    ]
    page["waiting"] = _waiting(state)
    page["resume_choices"] = ["current", "previous", *state.states]
    page["is_final"] = RunStatus(state.status).is_final
    return page


def _waiting(state: Any) -> dict[str, Any] | None:
    """What a parked run waits for, and when it wakes ("wakes in 2 h 00 min")."""
    waiting = state.waiting_for
    if state.status != RunStatus.WAITING or not waiting:
        return None
    from datetime import UTC, datetime

    until = parse_time(waiting.get("until"))
    left = None
    if until is not None:
        left = human_duration(max(0.0, (until - datetime.now(UTC)).total_seconds() * 1000))
    return {
        "kind": waiting.get("kind"),
        "state": waiting.get("state"),
        "signal": waiting.get("signal"),
        "until": until,
        "since": parse_time(waiting.get("since")),
        "wakes_in": left,
    }
