"""Loops in the admin, the API and the graph: iterations counted, listed, drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests.helpers import API, assert_conforms, openapi_schema
from wfstate import runs
from wfstate.definitions import get_registry
from wfstate.state import RunStatus, WorkflowState

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("wfstate_settings")]


@pytest.fixture
def nested(tmp_path: Path, wfstate_settings: dict[str, Any]) -> WorkflowState:
    from wfstate import index

    wfstate_settings["INDEX_ON_WRITE"] = False  # indexed once, below
    work = tmp_path / "work"
    work.mkdir()
    (work / "release").touch()
    state = runs.start_run("loop_crash_nested", {"dir": str(work)})
    assert state.status == RunStatus.COMPLETED, state.error
    index.index_state(state)
    return state


def test_api_lists_a_loops_iterations_and_a_nested_loops_runs(
    admin_client: Client, nested: WorkflowState
) -> None:
    schema = openapi_schema(admin_client)
    path = f"{API}runs/{nested.workflow_id}/loops/outer/"
    response = admin_client.get(path)
    assert_conforms(schema, "GET", path, response)
    body = response.json()
    assert body["count"] == 2 and body["length"] == 2 and body["running"] == []
    assert [it["item"] for it in body["iterations"]] == ["a", "b"]
    first_inner = body["iterations"][0]["states"]["inner"]["loop"]["file"]
    # The first outer iteration's inner loop: a run of the loop no longer in `states`.
    inner = admin_client.get(path.replace("/outer/", "/inner/"), {"file": first_inner, "limit": 3})
    assert_conforms(schema, "GET", path, inner)
    data = inner.json()
    assert data["count"] == 10 and data["file"] == first_inner
    assert [it["states"]["work"]["status"] for it in data["iterations"]] == ["completed"] * 3
    assert [it["item"] for it in data["iterations"]] == [1, 2, 3]
    latest = admin_client.get(path.replace("/outer/", "/inner/"), {"offset": 8}).json()
    assert [it["index"] for it in latest["iterations"]] == [8, 9]
    assert latest["file"] != first_inner
    # The run's state shows each loop's progress.
    run = admin_client.get(f"{API}runs/{nested.workflow_id}/").json()
    assert run["states"]["outer"]["loop"]["done"] == 2
    for bad in (
        admin_client.get(path.replace("/outer/", "/work/")),
        admin_client.get(path.replace("/outer/", "/nope/")),
        admin_client.get(path, {"file": "../../etc"}),
        admin_client.get(path, {"file": "outer.ffffffff"}),
        admin_client.get(
            path.replace("/outer/", "/inner/"), {"file": first_inner.replace("inner", "outer", 1)}
        ),
    ):
        assert bad.status_code in (400, 404), bad.content
        assert_conforms(schema, "GET", path, bad)


def test_admin_page_shows_loops_and_draws_them(admin_client: Client, nested: WorkflowState) -> None:
    url = reverse("admin:wfstate_workflowrun_change", args=[nested.workflow_id])
    html = admin_client.get(url).content.decode()
    assert 'id="wf-loops"' in html and 'id="wf-loop-outer"' in html
    assert html.count('data-iteration="') >= 2
    assert "its iterations" in html  # an outer iteration names its inner loop's run
    assert "wf-node-for_each" in html and "wf-edge-body" in html
    assert "for_each 2/2" in html  # the loop node's caption: iterations done / items


def test_admin_page_shows_a_loop_in_flight(admin_client: Client) -> None:
    from wfstate.stores import get_store

    definition = get_registry().get("loop_crash")
    state = WorkflowState.new("loop_crash", inputs={"dir": "/nonexistent"})
    store = get_store()
    store.save(state)
    from wfstate.state import StepResult, StepStatus
    from wfstate.stores.records import encode

    store.append_records(
        state.workflow_id, "each.00000000", encode({"kind": "start", "items": [1, 2]})
    )
    state.states["each"] = StepResult(
        name="each",
        status=StepStatus.RUNNING,
        loop={
            "type": "for_each",
            "file": "each.00000000",
            "records": 1,
            "length": 2,
            "done": 0,
            "running": {"0": {"index": 0, "item": 1, "step": "work", "steps": []}},
        },
    )
    state.status = RunStatus.RUNNING
    state.current_state = "each"
    store.save(state)
    from wfstate import index

    index.index_state(state)
    html = admin_client.get(
        reverse("admin:wfstate_workflowrun_change", args=[state.workflow_id])
    ).content.decode()
    assert "In flight" in html and "<code>work</code>" in html
    assert "for_each 0/2" in html
    assert definition.graph()["edges"][0]["kind"] in ("body", "success", "failure")


def test_definition_graph_has_body_edges() -> None:
    graph = get_registry().get("loop_crash_nested").graph()
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    assert ("outer", "inner", "body") in edges
    assert ("inner", "after", "body") in edges  # a body step with no route goes on
    assert ("inner", "work", "body") in edges
    assert ("after", "outer", "success") in edges
    assert {n["id"]: n["type"] for n in graph["nodes"]}["outer"] == "for_each"
