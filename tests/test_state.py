"""The state document (SPEC §4): round trip, stable key order, schema upgrades."""

from __future__ import annotations

import difflib
import json
import random
import re
from typing import Any

import pytest

from tests.helpers import STEP_KEYS, TOP_KEYS
from wfstate.state import (
    SCHEMA_VERSION,
    RunStatus,
    StepResult,
    StepStatus,
    WorkflowState,
    upgrade,
    utcnow,
)
from wfstate.stores.jsonfile import serialize


def sample() -> WorkflowState:
    state = WorkflowState.new(
        "release",
        inputs={"tag": "v1.4.0", "dry_run": False, "note": "héllo ✓"},
        workflow_version="1.2.0",
        definition_sha256="9a0c" * 16,
    )
    state.status = RunStatus.RUNNING
    state.current_state = "publish"
    state.states["build"] = StepResult(
        name="build",
        status=StepStatus.COMPLETED,
        output="built\n",
        stderr="",
        exit_code=0,
        started_at="2026-11-27T11:00:00.200000Z",
        completed_at="2026-11-27T11:00:03.900000Z",
        duration_ms=3700,
    )
    state.states["publish"] = StepResult(name="publish", started_at=utcnow())
    state.history.append({"resumed_at": utcnow(), "from": "current"})
    return state


def test_round_trip() -> None:
    state = sample()
    again = WorkflowState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert again.to_dict() == state.to_dict()
    assert isinstance(again.status, RunStatus)
    assert isinstance(again.states["build"].status, StepStatus)


def test_key_order_is_stable() -> None:
    document = sample().to_dict()
    assert list(document) == TOP_KEYS
    for step in document["states"].values():
        assert list(step) == STEP_KEYS


def test_key_order_does_not_depend_on_the_input_order() -> None:
    document = sample().to_dict()
    items = list(document.items())
    random.Random(4).shuffle(items)
    shuffled = dict(items)
    assert list(WorkflowState.from_dict(shuffled).to_dict()) == TOP_KEYS
    assert serialize(WorkflowState.from_dict(shuffled)) == serialize(sample_from(document))


def sample_from(document: dict[str, Any]) -> WorkflowState:
    return WorkflowState.from_dict(document)


def test_diff_between_revisions_shows_only_what_changed() -> None:
    state = sample()
    before = serialize(state).decode().splitlines()
    state.states["publish"].status = StepStatus.COMPLETED
    state.revision += 1
    after = serialize(state).decode().splitlines()
    changed = [
        line
        for line in difflib.unified_diff(before, after, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert sorted(changed) == sorted(
        [
            '-      "status": "running",',
            '+      "status": "completed",',
            '-  "revision": 0,',
            '+  "revision": 1,',
        ]
    )


def test_file_format_is_two_space_indented_utf8() -> None:
    data = serialize(sample())
    text = data.decode("utf-8")
    assert text.startswith(f'{{\n  "schema_version": {SCHEMA_VERSION},\n  "workflow_id": ')
    assert text.endswith("}\n")
    assert "héllo ✓" in text  # UTF-8, not \u escapes


def test_times_are_utc_iso_with_z() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", utcnow())
    state = sample()
    assert state.started_at.endswith("Z")


def test_upgrade_from_version_0() -> None:
    # The first prototype's shape: no schema_version, "id", no history or revision.
    old = {
        "id": "3f6c1e0a-9b1d-4c1e-8f5e-2d7a0c9b4e11",
        "workflow_name": "release",
        "status": "completed",
        "started_at": "2026-11-27T11:00:00.123456Z",
        "inputs": {"tag": "v1"},
        "states": {"build": {"name": "build", "status": "completed", "exit_code": 0}},
    }
    state = WorkflowState.from_dict(old)
    assert state.schema_version == SCHEMA_VERSION
    assert state.workflow_id == old["id"]
    assert state.history == []
    assert state.revision == 0
    assert state.status is RunStatus.COMPLETED
    assert state.states["build"].exit_code == 0
    assert state.to_dict()["schema_version"] == SCHEMA_VERSION
    assert "id" not in state.to_dict()
    assert "id" in old  # the caller's document is not modified


def test_upgrade_from_version_1() -> None:
    # A file of the first release (before loops, sub-workflows, waits, schedules): its
    # run and steps have none of the second wave's keys, and they read as "nothing".
    v1 = sample().to_dict()
    for key in ("started_by", "parent_run_id", "outputs", "hooks", "warnings", "exit_code"):
        v1.pop(key)
    v1.pop("waiting_for")
    v1["schema_version"] = 1
    for step in v1["states"].values():
        for key in ("process", "loop", "child_run_id", "hooks", "signal", "signal_id"):
            step.pop(key, None)
        for key in ("payload", "sender", "received_at"):
            step.pop(key, None)
    state = WorkflowState.from_dict(v1)
    assert state.schema_version == SCHEMA_VERSION == 2
    assert (state.started_by, state.parent_run_id, state.waiting_for) == (None, None, None)
    assert (state.outputs, state.hooks, state.warnings) == ({}, {}, [])
    document = state.to_dict()
    assert document["schema_version"] == 2
    assert list(document) == TOP_KEYS
    assert all(list(step) == STEP_KEYS for step in document["states"].values())
    assert v1["schema_version"] == 1  # the caller's document is not modified


def test_newer_schema_version_is_refused() -> None:
    document = sample().to_dict()
    document["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        WorkflowState.from_dict(document)


@pytest.mark.parametrize("version", ["1", 1.0, True, None])
def test_non_integer_schema_version_is_refused(version: Any) -> None:
    with pytest.raises(ValueError, match="schema_version"):
        upgrade({"schema_version": version})


@pytest.mark.parametrize(
    "document",
    [
        [],
        "x",
        {},
        {"workflow_id": "x"},
        {"workflow_id": "x", "workflow_name": "y", "states": []},
        {"workflow_id": "x", "workflow_name": "y", "states": {"a": 1}},
        {"workflow_id": "x", "workflow_name": "y", "states": {"a": {}}},
        {"workflow_id": "x", "workflow_name": "y", "history": {}},
        {"workflow_id": "x", "workflow_name": "y", "status": "bogus"},
        {"workflow_id": "x", "workflow_name": "y", "revision": "many"},
        {"workflow_id": "x", "workflow_name": "y", "inputs": 5},
    ],
)
def test_malformed_documents_raise_value_error(document: Any) -> None:
    with pytest.raises(ValueError):  # the message varies by case
        WorkflowState.from_dict(document)


def test_statuses() -> None:
    assert {s.value for s in RunStatus} == {
        "pending",
        "running",
        "completed",
        "failed",
        "cancelled",
        "waiting",
    }
    assert {s.value for s in StepStatus} == {
        "running",
        "completed",
        "failed",
        "cancelled",
        "skipped",
        "waiting",
    }
    assert [s.is_final for s in RunStatus] == [False, False, True, True, True, False]


def test_derived_views() -> None:
    state = sample()
    assert state.steps_done == 1
    state.started_at = "2026-11-27T11:00:00.000000Z"
    state.completed_at = "2026-11-27T11:00:04.500000Z"
    assert state.duration_ms() == 4500


def test_store_bytes_equal_to_dict_bytes() -> None:
    # The store serializes StepResult dataclasses natively (faster than to_dict()): the
    # bytes must stay exactly those of the documented to_dict().
    import dataclasses

    import orjson

    from wfstate.stores._serialize import DUMP_OPTIONS

    state = sample()
    state.states["publish"].status = "completed"  # type: ignore[assignment]
    assert serialize(state) == orjson.dumps(state.to_dict(), option=DUMP_OPTIONS)
    assert [f.name for f in dataclasses.fields(StepResult)] == STEP_KEYS
