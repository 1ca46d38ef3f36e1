"""Real awf workflow files (../shared/awf-fixtures) validate and run through the engine."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from wfstate import runs
from wfstate.definitions import load_definition
from wfstate.state import RunStatus, StepStatus

# shared/ stands beside the repository (in CI too); WFSTATE_AWF_FIXTURES points elsewhere.
FIXTURES = Path(
    os.environ.get("WFSTATE_AWF_FIXTURES")
    or Path(__file__).resolve().parents[1].parent / "shared" / "awf-fixtures"
)

# Outside CI a checkout without shared/ beside it skips; in CI a missing corpus fails.
pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir() and not os.environ.get("CI"), reason=f"{FIXTURES} is not there"
)


@pytest.fixture
def awf_dir(settings: Any, tmp_path: Path) -> Path:
    workflows = tmp_path / "awf"
    workflows.mkdir()
    for name in (
        "signal-multi-step",
        "example-simple",
        "valid-parallel",
        "retry-audit",
        "loop-foreach",
        "loop-while",
    ):
        shutil.copy(FIXTURES / f"{name}.yaml", workflows)
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "WORKFLOW_DIRS": [workflows],
        "INDEX_ON_WRITE": False,
    }
    return workflows


def test_signal_multi_step_runs(awf_dir: Path) -> None:
    state = runs.start_run("signal-multi-step")
    assert state.status == RunStatus.COMPLETED, state.error
    assert [state.states[s].output for s in ("step1", "step2", "step3")] == [
        "Step 1\n",
        "Step 2\n",
        "Step 3\n",
    ]


def test_example_simple_runs_with_awf_template_spelling(awf_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "some file.txt"
    target.write_text("one\ntwo\nthree\n")
    definition = load_definition(awf_dir / "example-simple.yaml")
    assert not any("hooks" in w for w in definition.warnings)  # supported
    assert any("capture" in w for w in definition.warnings)
    state = runs.start_run("analyze-file", {"file_path": str(target)}, coerce_strings=True)
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.states["extract"].output == "one\ntwo\nthree\n"
    assert state.states["analyze"].output.strip().startswith("3 ")
    missing = runs.start_run("analyze-file", {"file_path": str(tmp_path / "nope")})
    assert missing.status == RunStatus.FAILED and missing.current_state == "error"
    assert missing.error == "Analysis failed"


def test_valid_parallel_runs_branches(awf_dir: Path) -> None:
    state = runs.start_run("parallel-workflow")
    assert state.status == RunStatus.COMPLETED, state.error
    for branch in ("task_a", "task_b", "task_c"):
        assert state.states[branch].status == StepStatus.COMPLETED
    assert state.states["aggregate"].output == "All tasks completed\n"


def test_retry_audit_runs(awf_dir: Path) -> None:
    state = runs.start_run("retry-audit")
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.states["run"].attempt == 1 and state.states["run"].output == "ok\n"


def _iteration_outputs(state: Any, loop: str, step: str) -> list[Any]:
    from wfstate.stores import get_store
    from wfstate.stores.records import decode

    summary = state.states[loop].loop
    found, _ = decode(get_store().read_records(state.workflow_id, summary["file"]))
    return [r["states"][step]["output"] for r in found if r["kind"] == "iteration"]


def test_loop_foreach_runs_every_iteration(awf_dir: Path) -> None:
    state = runs.start_run("test-foreach")
    assert state.status == RunStatus.COMPLETED, state.error
    # What awf prints, one line per iteration ({{.loop.Index}} is 0-based) and, unlike
    # awf, every iteration's result is kept.
    assert _iteration_outputs(state, "process_files", "echo_file") == [
        "Processing a.txt (0/3)\n",
        "Processing b.txt (1/3)\n",
        "Processing c.txt (2/3)\n",
    ]
    assert state.states["echo_file"].output == "Processing c.txt (2/3)\n"  # the latest
    assert state.states["process_files"].output == {
        "iterations": 3,
        "broke_at": None,
        "stopped": None,
    }
    assert state.current_state == "done"


def test_loop_while_runs_until_its_condition_fails(awf_dir: Path) -> None:
    state = runs.start_run("test-while")
    assert state.status == RunStatus.COMPLETED, state.error
    # test 0..4 -lt 5 succeed; index 5 fails, so states.decrement.ExitCode != 0 ends it.
    summary = state.states["countdown"].loop
    assert summary is not None and summary["done"] == 6
    from wfstate.stores import get_store
    from wfstate.stores.records import decode

    found, _ = decode(get_store().read_records(state.workflow_id, summary["file"]))
    codes = [r["states"]["decrement"]["exit_code"] for r in found if r["kind"] == "iteration"]
    assert codes == [0, 0, 0, 0, 0, 1]
    assert state.states["decrement"].status == StepStatus.FAILED
    assert state.current_state == "done"
