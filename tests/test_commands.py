"""The commands' contract: exit codes and --json (SPEC §8)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import call

BAD = Path(__file__).parent / "bad_workflows" / "broken.yaml"


@pytest.fixture(autouse=True)
def _storage(settings: Any, tmp_path: Path) -> None:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "INDEX_ON_WRITE": False,
    }


run = call


def test_success_prints_id_status_and_file() -> None:
    code, out, _ = run("run_workflow", "demo", "--input", "who=cli")
    assert code == 0
    assert "status completed" in out and "state file" in out


def test_json_is_one_object() -> None:
    code, out, _ = run("run_workflow", "demo", "--json", "--input", "flaky_failures=0")
    assert code == 0
    doc = orjson.loads(out)
    assert doc["status"] == "completed" and doc["inputs"] == {"who": "world", "flaky_failures": 0}
    code, out, _ = run("workflow_status", doc["workflow_id"], "--json")
    assert code == 0 and orjson.loads(out)["revision"] == doc["revision"]
    code, out, _ = run("list_workflows", "--json")
    assert "demo" in [w["name"] for w in orjson.loads(out)["workflows"]]


def test_unknown_run_is_1() -> None:
    code, out, message = run("workflow_status", str(uuid.uuid4()), "--json")
    assert code == 1 and "no run" in message
    assert orjson.loads(out)["error"]["code"] == "run_not_found"
    assert run("workflow_status", "../../etc/passwd")[0] == 1


def test_invalid_inputs_are_1_with_every_error_listed() -> None:
    code, out, message = run(
        "run_workflow",
        "fails",
        "--input",
        "count=abc",
        "--input",
        "mode=medium",
        "--input",
        "bogus=1",
        "--json",
    )
    assert code == 1
    errors = orjson.loads(out)["error"]["errors"]
    assert set(errors) == {"count", "mode", "bogus"}
    for name in ("count", "mode", "bogus"):
        assert name in message


def test_invalid_definition_is_2_with_file_and_line() -> None:
    code, out, message = run("validate_workflow", str(BAD), "--json")
    assert code == 2
    errors = orjson.loads(out)["error"]["errors"]
    assert len(errors) >= 2  # the unknown target and the step with neither command nor call
    assert all(e["file"].endswith("broken.yaml") and e["line"] > 0 for e in errors)
    assert f"{BAD}:8" in message  # on_success: nowhere


def test_failed_run_is_3() -> None:
    code, out, message = run("run_workflow", "fails", "--json")
    assert code == 3 and "ended failed" in message
    assert orjson.loads(out)["status"] == "failed"


def test_storage_fault_is_4(settings: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": blocker / "storage"}
    code, out, message = run("run_workflow", "demo", "--json")
    assert code == 4, message
    assert orjson.loads(out)["error"]["code"] == "storage_error"


def test_resume_refusal_is_1() -> None:
    _, out, _ = run("run_workflow", "demo", "--json")
    workflow_id = orjson.loads(out)["workflow_id"]
    code, _, message = run("resume_workflow", workflow_id)
    assert code == 1 and "--from" in message
    code, out, _ = run("resume_workflow", workflow_id, "--from", "previous", "--json")
    assert code == 0 and orjson.loads(out)["status"] == "completed"
