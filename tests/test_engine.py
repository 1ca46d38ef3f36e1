"""The engine in-process: checkpoints, routing, retries, timeouts, parallel branches,
resume semantics and shell safety."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import HOSTILE as TEMPLATE_HOSTILE
from tests.helpers import STEP_KEYS, TOP_KEYS, pid_alive, wait_for
from wfstate import runs
from wfstate.definitions import get_registry
from wfstate.engine import Executor
from wfstate.exceptions import DefinitionChanged, NotResumable, RunFinished
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores import get_store

# The document's keys as SPEC §4 lists them (one list, kept by the state tests).
SPEC_FIELDS = TOP_KEYS
STEP_FIELDS = STEP_KEYS


@pytest.fixture(autouse=True)
def _no_index(settings: Any, tmp_path: Path) -> None:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "INDEX_ON_WRITE": False,
    }


def test_demo_run_writes_every_field_of_the_spec() -> None:
    state = runs.start_run("demo", {"who": "tester"})
    assert state.status == RunStatus.COMPLETED, state.error
    doc = orjson.loads(get_store().path_for(state.workflow_id).read_bytes())  # type: ignore[attr-defined]
    assert list(doc) == SPEC_FIELDS
    assert doc["status"] == "completed" and doc["current_state"] == "done"
    assert doc["completed_at"].endswith("Z") and doc["started_at"].endswith("Z")
    for name in ("greet", "prepare", "checks", "count_letters", "flaky", "report"):
        step = doc["states"][name]
        assert all(field in step for field in STEP_FIELDS), name
        assert step["status"] == "completed", (name, step)
    assert doc["states"]["greet"]["output"].startswith("Hello, tester!")
    assert doc["states"]["flaky"]["attempt"] == 2  # failed once, retried
    assert doc["states"]["checks"]["output"] == {"count_letters": "completed", "flaky": "completed"}
    assert doc["states"]["done"]["output"] == "Greeted tester"


def test_revision_grows_by_one_per_checkpoint_and_file_names_step_in_flight() -> None:
    definition = get_registry().get("checkpoints")
    store = get_store()
    state, _ = runs.create_run("checkpoints")
    seen: list[tuple[int, str | None, dict[str, str]]] = []

    def listener(s: WorkflowState) -> None:
        on_disk = store.load(s.workflow_id)
        seen.append(
            (
                on_disk.revision,
                on_disk.current_state,
                {k: str(v.status) for k, v in on_disk.states.items()},
            )
        )

    with store.run_lock(state.workflow_id):
        final = Executor(store, definition, listeners=[listener]).execute(
            store.load(state.workflow_id)
        )
    revisions = [r for r, _, _ in seen]
    assert revisions == list(range(2, 2 + len(revisions)))  # creation wrote revision 1
    assert final.revision == revisions[-1]
    # Each step start is a checkpoint naming the step in flight.
    starts = [(cur, st) for _, cur, st in seen if cur in st and st[cur] == "running"]
    assert [cur for cur, _ in starts] == ["one", "two", "three"]
    # And from inside a step, the file says so too.
    assert final.states["one"].output["current_state"] == "one"
    assert final.states["one"].output["my_status"] == "running"
    assert final.states["two"].output["current_state"] == "two"


def test_failed_step_without_route_fails_the_run_with_its_error() -> None:
    state = runs.start_run("fails")
    assert state.status == RunStatus.FAILED
    step = state.states["boom"]
    assert step.status == StepStatus.FAILED and step.exit_code == 3
    assert "disk on fire" in (step.error or "") and step.output == "about to fail\n"
    assert "no failure route" in (state.error or "")


def test_retry_records_attempts_and_respects_retryable_codes(tmp_path: Path) -> None:
    ok = runs.start_run("retrying", {"dir": str(tmp_path), "fail_times": 2})
    assert ok.status == RunStatus.COMPLETED
    assert ok.states["flaky"].attempt == 3
    assert (tmp_path / "attempts").read_text().count("x") == 3

    other = tmp_path / "other"
    other.mkdir()
    # Exit code 9 is not in retryable_exit_codes: one attempt, then the failure route.
    failed = runs.start_run("retrying", {"dir": str(other), "fail_times": 2, "code": 9})
    assert failed.status == RunStatus.FAILED and failed.current_state == "failed"
    assert failed.states["flaky"].attempt == 1 and failed.states["flaky"].exit_code == 9
    assert failed.error == "flaky gave up"


def test_timeout_kills_the_whole_group_and_follows_on_failure(tmp_path: Path) -> None:
    state = runs.start_run("timeouts", {"dir": str(tmp_path)})
    slow = state.states["slow"]
    assert slow.status == StepStatus.FAILED and "timed out after 0.3s" in (slow.error or "")
    assert state.states["handled"].status == StepStatus.COMPLETED
    assert state.current_state == "timed_out" and state.status == RunStatus.FAILED
    child = int((tmp_path / "child.pid").read_text())
    wait_for(lambda: not pid_alive(child), 5, "the step's child to be killed")


def test_parallel_branches_overlap_and_each_result_is_recorded() -> None:
    state = runs.start_run("fanout")
    assert state.status == RunStatus.COMPLETED, state.error
    a, b = state.states["a"].output, state.states["b"].output
    c = state.states["c"]
    # Overlapping start/end times prove the branches ran at the same time.
    assert a["start"] < b["end"] and b["start"] < a["end"]
    assert c.status == StepStatus.COMPLETED and c.output == "c\n"
    assert state.states["branches"].output == {"a": "completed", "b": "completed", "c": "completed"}


def test_big_output_spills_to_a_side_file(settings: Any, tmp_path: Path) -> None:
    settings.WFSTATE = {**settings.WFSTATE, "MAX_INLINE_OUTPUT": 100}
    state = runs.start_run("demo", {"who": "x" * 30})
    assert state.status == RunStatus.COMPLETED
    # greet prints 'Hello, xxx...!' + uname: under 100 bytes; force a big one instead:
    settings.WFSTATE = {**settings.WFSTATE, "MAX_INLINE_OUTPUT": 10}
    state = runs.start_run("demo", {"who": "y" * 30})
    greet = state.states["greet"]
    assert greet.output_truncated and len(greet.output.encode()) <= 10
    whole = get_store().load_output(state.workflow_id, "greet", "stdout").decode()
    assert whole.startswith("Hello, " + "y" * 30 + "!")


# The hostile values of the template tests, through a real run this time.
HOSTILE = TEMPLATE_HOSTILE


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_injection_never_runs_and_the_step_sees_the_literal_value(
    tmp_path: Path, value: str
) -> None:
    state = runs.start_run("inject", {"v": value, "dir": str(tmp_path)})
    assert state.status == RunStatus.COMPLETED, state.error
    assert not (tmp_path / "X").exists()
    for context in ("unquoted", "double", "single"):
        assert (tmp_path / f"{context}.out").read_text() == value, context


def test_resume_from_previous_and_from_state_keep_rewound_results_in_history() -> None:
    state = runs.start_run("demo", {"who": "again"})
    assert state.status == RunStatus.COMPLETED
    with pytest.raises(NotResumable, match="completed"):
        runs.resume_run(state.workflow_id)
    again = runs.resume_run(state.workflow_id, from_state="previous")
    assert again.status == RunStatus.COMPLETED
    assert again.history[-1]["from"] == "previous" and again.history[-1]["state"] == "report"
    assert [r["name"] for r in again.history[-1]["rewound"]] == ["report", "done"]
    third = runs.resume_run(state.workflow_id, from_state="prepare", inputs={"who": "changed"})
    assert third.status == RunStatus.COMPLETED
    assert third.workflow_id == state.workflow_id and third.started_at == state.started_at
    assert third.inputs["who"] == "changed"
    rewound = [r["name"] for r in third.history[-1]["rewound"]]
    assert rewound[0] == "prepare" and "greet" not in rewound
    assert third.states["greet"].output == state.states["greet"].output  # not re-run
    assert third.states["done"].output == "Greeted changed"
    with pytest.raises(NotResumable, match="no state"):
        runs.resume_run(state.workflow_id, from_state="nope")


def test_resume_refuses_a_changed_definition_unless_allowed() -> None:
    state = runs.start_run("fails")
    store = get_store()
    store.update(state.workflow_id, lambda s: setattr(s, "definition_sha256", "0" * 64))
    with pytest.raises(DefinitionChanged, match="changed since"):
        runs.resume_run(state.workflow_id)
    again = runs.resume_run(state.workflow_id, allow_changed_definition=True)
    assert again.status == RunStatus.FAILED  # it fails again, but it did run
    assert again.history[-1]["allow_changed_definition"] is True


def test_cancel_without_executor_marks_cancelled_at_once_and_can_resume(tmp_path: Path) -> None:
    state, _ = runs.create_run("retrying", {"dir": str(tmp_path), "fail_times": 0})
    outcome, cancelled = runs.cancel_run(state.workflow_id)
    assert outcome == "cancelled" and cancelled.status == RunStatus.CANCELLED
    with pytest.raises(RunFinished):
        runs.cancel_run(state.workflow_id)
    resumed = runs.resume_run(state.workflow_id)
    assert resumed.status == RunStatus.COMPLETED


def test_max_concurrent_one_runs_branches_one_after_the_other() -> None:
    state = runs.start_run("fanout-serial")
    assert state.status == RunStatus.COMPLETED, state.error
    a, b = state.states["a"].output, state.states["b"].output
    assert a["end"] <= b["start"] or b["end"] <= a["start"]


def test_progress_lines_name_state_status_duration_and_attempt() -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("run_workflow", "demo", verbosity=2, stdout=out)
    text = out.getvalue()
    assert "▸ greet  (attempt 1)" in text
    assert "✓ greet  completed" in text
    assert "↻ flaky  attempt 1 failed" in text
    assert "✓ flaky  completed" in text and "(attempt 2)" in text
