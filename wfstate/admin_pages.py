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
from wfstate.engine.loops import read_iterations
from wfstate.exceptions import WFStateError
from wfstate.formatting import human_duration, pretty_json
from wfstate.graph import graph_from_states, render_svg, timeline
from wfstate.state import RunStatus, WorkflowState, parse_time
from wfstate.stores import get_store


def _definition_graph(workflow_name: str) -> tuple[dict[str, Any] | None, str]:
    """The current definition's graph, or None with the reason."""
    try:
        definition = get_registry().get(workflow_name)
    except Exception as exc:  # missing or invalid: drawn from the file
        return None, str(exc) or type(exc).__name__
    return definition.graph(), ""


def _hook_rows(hooks: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per hook action that ran: event, kind, status, output or error."""
    rows = []
    for event, records in hooks.items():
        for record in records if isinstance(records, list) else []:
            if isinstance(record, dict):
                rows.append(
                    {
                        "event": event,
                        "kind": record.get("kind", ""),
                        "action": record.get("action", ""),
                        "status": record.get("status", ""),
                        "text": pretty_json(
                            record.get("output")
                            if record.get("status") == "completed"
                            else record.get("error")
                        ),
                    }
                )
    return rows


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
        graph,
        statuses,
        state.current_state,
        title=f"{state.workflow_name} {workflow_id}",
        captions=_loop_captions(state),
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
                "child_run_id": step.child_run_id,
                "hooks": _hook_rows(step.hooks or {}),
            }
        )
    page["steps"] = steps
    page["loops"] = [
        _loop_panel(store, state, name) for name, step in state.states.items() if step.loop
    ]
    # Sub-workflows, both ways; hooks and warnings (engine/calls.py, engine/hooks.py).
    page["parent_run_id"] = state.parent_run_id
    page["started_by"] = state.started_by
    page["children"] = [
        {"state": step.name, "child_run_id": step.child_run_id, "status": str(step.status)}
        for step in state.states.values()
        if step.child_run_id
    ]
    page["hooks"] = _hook_rows(state.hooks)
    page["warnings"] = list(state.warnings)
    page["outputs"] = [(k, pretty_json(v)) for k, v in state.outputs.items()]
    page["history"] = [
        {
            "event": entry.get("event", ""),
            "at": parse_time(entry.get("at")) if isinstance(entry.get("at"), str) else None,
            "summary": ", ".join(
                f"{k}={v}"
                for k, v in entry.items()
                if k not in ("event", "at", "rewound", "actor") and v not in (None, "", {}, [])
            ),
            # Who did it (wfstate.audit): the actor's own sentence.
            "by": entry["actor"].get("by", "") if isinstance(entry.get("actor"), dict) else "",
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


# Iterations shown on the page; the API pages through the rest (GET runs/{id}/loops/{loop}/).
LOOP_PAGE = 200


def _loop_captions(state: WorkflowState) -> dict[str, str]:
    """``6/10`` (iterations done / items) under each loop's node."""
    captions = {}
    for name, step in state.states.items():
        if step.loop:
            done, length = step.loop.get("done", 0), step.loop.get("length")
            captions[name] = f"{done}/{length}" if length is not None else f"{done} done"
    return captions


def _loop_panel(store: Any, state: WorkflowState, name: str) -> dict[str, Any]:
    """One loop of the run: its summary, the iterations in flight, the first finished ones
    (read from the loop's side file; an unreadable one is reported, not raised)."""
    panel: dict[str, Any] = {"name": name, "error": None, "iterations": [], "running": []}
    try:
        data = read_iterations(store, state, name, limit=LOOP_PAGE)
    except WFStateError as exc:
        panel["error"] = str(exc)
        return panel
    panel.update({k: v for k, v in data.items() if k not in ("iterations",)})
    panel["more"] = max(0, data["count"] - LOOP_PAGE)
    panel["iterations"] = [
        {
            "index": record["index"],
            "item": pretty_json(record.get("item")),
            "status": record.get("status"),
            "exit_to": record.get("exit_to"),
            "steps": [
                {
                    "name": step_name,
                    "status": result.get("status"),
                    "output": pretty_json(result.get("output")),
                    "error": result.get("error"),
                    "inner_file": (result.get("loop") or {}).get("file"),
                }
                for step_name, result in (record.get("states") or {}).items()
            ],
        }
        for record in data["iterations"]
    ]
    return panel


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
