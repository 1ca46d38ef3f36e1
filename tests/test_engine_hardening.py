"""Failures inside execution end as step or run failures, never as a run left
``running``; a resume that cannot work is refused; a run is resumable as soon as its
outcome is durable; resuming a parallel block keeps its completed branches."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import call, wait_for
from wfstate import runs
from wfstate.definitions.model import RetryPolicy
from wfstate.engine import executor as executor_module
from wfstate.engine import prepare_resume
from wfstate.exceptions import NotResumable, RunLocked, StorageError
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, utcnow
from wfstate.stores import get_store


@pytest.fixture(autouse=True)
def _storage(settings: Any, tmp_path: Path) -> None:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "INDEX_ON_WRITE": False,
    }


def _on_disk(workflow_id: str) -> dict[str, Any]:
    return orjson.loads(get_store().path_for(workflow_id).read_bytes())  # type: ignore[attr-defined]


# --- values that used to escape the executor ----------------------------------------------


def test_a_call_step_returning_a_lone_surrogate_fails_the_step() -> None:
    state = runs.start_run("hard-values", {"mode": "surrogate"})
    step = state.states["surrogate"]
    assert step.status == StepStatus.FAILED
    assert "not JSON-serialisable" in (step.error or "") and "surrogates" in (step.error or "")
    # The failure route is followed and the whole file is readable UTF-8.
    assert state.status == RunStatus.FAILED and state.current_state == "handled"
    assert _on_disk(state.workflow_id)["status"] == "failed"


def test_an_error_message_with_a_lone_surrogate_is_recorded_readably() -> None:
    state = runs.start_run("hard-values", {"mode": "raise_surrogate"})
    step = state.states["raise_surrogate"]
    assert step.status == StepStatus.FAILED
    assert step.error == "ValueError: bad \\udcff byte"
    assert _on_disk(state.workflow_id)["current_state"] == "handled"


@pytest.mark.parametrize(("mode", "where"), [("env_nul", "env 'VALUE'"), ("dir_nul", "dir ")])
def test_a_nul_byte_in_env_or_dir_fails_the_step_with_a_clear_error(mode: str, where: str) -> None:
    state = runs.start_run("hard-values", {"mode": mode})
    step = state.states["use_nul"]
    assert step.status == StepStatus.FAILED
    assert where in (step.error or "") and "NUL byte" in (step.error or "")
    assert state.status == RunStatus.FAILED and state.current_state == "handled"


def test_a_non_json_call_result_fails_the_step() -> None:
    state = runs.start_run("hard-values", {"mode": "not_json"})
    assert state.states["not_json"].status == StepStatus.FAILED
    assert "not JSON-serialisable" in (state.states["not_json"].error or "")
    assert state.current_state == "handled"


def test_a_call_step_calling_sys_exit_fails_the_step_not_the_executor() -> None:
    state = runs.start_run("hard-values", {"mode": "exits"})
    assert state.states["exits"].status == StepStatus.FAILED
    assert state.states["exits"].error == "tests.hardening_steps.exits called sys.exit(7)"
    assert state.current_state == "handled"


def test_an_error_in_a_when_expression_fails_the_run_naming_the_state() -> None:
    state = runs.start_run("hard-values", {"mode": "bad_when"})
    assert state.status == RunStatus.FAILED
    assert (state.error or "").startswith("state 'bad_when':")
    assert _on_disk(state.workflow_id)["status"] == "failed"


def test_a_retry_delay_that_overflows_is_capped_by_max_delay(tmp_path: Path) -> None:
    started = time.monotonic()
    state = runs.start_run("retry-overflow", {"dir": str(tmp_path)})
    assert state.status == RunStatus.FAILED and state.current_state == "gave_up"
    assert state.states["flaky"].attempt == 6
    assert (tmp_path / "attempts").read_text().count("x") == 6
    assert time.monotonic() - started < 30  # each wait was max_delay (20 ms), not forever


def test_retry_delay_computation_never_overflows_nor_turns_nan() -> None:
    capped = RetryPolicy(
        max_attempts=5000,
        initial_delay=1.0,
        max_delay=30.0,
        backoff="exponential",
        multiplier=1e300,
        jitter=0.1,
    )
    for attempt in (1, 2, 3, 1000, 10**9):
        assert 0.0 <= capped.delay(attempt) <= 33.0
    # Without max_delay an overflowing delay is not waited for (nor turned into 0 by
    # NaN jitter): the executor gives up retrying with a clear error instead.
    uncapped = RetryPolicy(
        max_attempts=5, initial_delay=1.0, backoff="exponential", multiplier=1e300
    )
    assert executor_module._retry_delay(uncapped, 3, random.Random(0)) is None
    assert executor_module._retry_delay(capped, 10**9, random.Random(0)) is not None


# --- a storage error mid-run ------------------------------------------------------------------


def test_a_storage_error_mid_run_ends_the_run_failed_when_the_failure_can_be_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = get_store()
    state, _ = runs.create_run("checkpoints")
    real_save = store.save
    calls = {"n": 0}

    def flaky_save(s: WorkflowState, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 3:  # a step boundary in the middle of the run
            raise StorageError("simulated: no space left on device")
        real_save(s, **kwargs)

    monkeypatch.setattr(store, "save", flaky_save)
    final = runs.execute(state.workflow_id)
    doc = _on_disk(state.workflow_id)
    assert final.status == RunStatus.FAILED and doc["status"] == "failed"
    assert "could not write a checkpoint: simulated: no space left" in doc["error"]
    assert all(s["status"] != "running" for s in doc["states"].values())


def test_a_storage_error_that_also_stops_the_failure_is_raised_and_the_run_is_recoverable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = get_store()
    state, _ = runs.create_run("checkpoints")
    real_save = store.save
    calls = {"n": 0}

    def broken_save(s: WorkflowState, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise StorageError("simulated: disk gone")
        real_save(s, **kwargs)

    monkeypatch.setattr(store, "save", broken_save)
    with pytest.raises(StorageError, match="disk gone"):
        runs.execute(state.workflow_id)
    monkeypatch.setattr(store, "save", real_save)
    # Left as its last durable checkpoint says (running, lock free): recovery finishes it.
    assert _on_disk(state.workflow_id)["status"] == "running"
    assert runs.recover_runs() == [state.workflow_id]
    assert _on_disk(state.workflow_id)["status"] == "completed"


def test_an_unreadable_cancel_marker_does_not_break_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = get_store()

    def broken(workflow_id: str) -> bool:
        raise OSError("simulated: I/O error")

    monkeypatch.setattr(store, "cancel_requested", broken)
    state = runs.start_run("fails")
    assert state.status == RunStatus.FAILED and state.states["boom"].exit_code == 3


def test_a_pending_run_whose_workflow_is_gone_fails_with_the_reason(
    settings: Any, tmp_path: Path
) -> None:
    workflows = tmp_path / "defs"
    workflows.mkdir()
    (workflows / "ephemeral.yaml").write_text(
        "name: ephemeral\nstates:\n  initial: a\n"
        "  a: {type: step, command: 'true', on_success: done}\n"
        "  done: {type: terminal, status: success}\n"
    )
    settings.WFSTATE = {
        **settings.WFSTATE,
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], workflows],
    }
    state, _ = runs.create_run("ephemeral")
    (workflows / "ephemeral.yaml").unlink()
    final = runs.execute(state.workflow_id)  # what a worker's task does
    assert final.status == RunStatus.FAILED
    assert "no workflow named 'ephemeral'" in (final.error or "")
    assert _on_disk(state.workflow_id)["status"] == "failed"


# --- resuming into a state that no longer exists -----------------------------------------------

V1 = """\
name: shifting
version: "1"
states:
  initial: first
  first: {type: step, command: 'true', on_success: second}
  second: {type: step, command: 'exit 4', on_success: done, on_failure: failed}
  done: {type: terminal, status: success}
  failed: {type: terminal, status: failure}
"""

V2 = """\
name: shifting
version: "2"
states:
  initial: first
  first: {type: step, command: 'true', on_success: renamed}
  renamed: {type: step, command: 'true', on_success: done, on_failure: failed}
  done: {type: terminal, status: success}
  failed: {type: terminal, status: failure}
"""


@pytest.fixture
def shifted(settings: Any, tmp_path: Path) -> str:
    """A run that failed in state 'second', whose definition then lost that state."""
    workflows = tmp_path / "shifting"
    workflows.mkdir()
    path = workflows / "shifting.yaml"
    path.write_text(V1)
    settings.WFSTATE = {
        **settings.WFSTATE,
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], workflows],
    }
    state = runs.start_run("shifting")
    assert state.status == RunStatus.FAILED and state.current_state == "failed"
    path.write_text(V2)
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    return state.workflow_id


def test_resume_with_a_changed_definition_into_a_missing_state_is_refused(shifted: str) -> None:
    before = _on_disk(shifted)
    with pytest.raises(NotResumable, match="no state 'second' any more"):
        runs.resume_run(shifted, allow_changed_definition=True)
    assert _on_disk(shifted) == before  # refused: nothing written, nothing stranded
    # An explicit --from that exists in the new definition works.
    again = runs.resume_run(shifted, from_state="first", allow_changed_definition=True)
    assert again.status == RunStatus.COMPLETED and again.states["renamed"].status == "completed"


def test_the_refused_resume_is_exit_1_with_the_code(shifted: str) -> None:
    code, out, message = call("resume_workflow", shifted, "--allow-changed-definition", "--json")
    assert code == 1, message
    assert orjson.loads(out)["error"]["code"] == "not_resumable"


@pytest.mark.django_db
def test_the_refused_resume_is_409_in_the_api(shifted: str, admin_client: Any) -> None:
    response = admin_client.post(
        f"/api/wfstate/runs/{shifted}/resume/",
        {"allow_changed_definition": True},
        content_type="application/json",
    )
    assert response.status_code == 409, response.content
    assert response.json()["code"] == "not_resumable"


# --- resumable as soon as the outcome is durable ----------------------------------------------


class _SlowListener:
    """An index listener whose flush at exit takes as long as the test wants."""

    def __init__(self, release: threading.Event | None) -> None:
        self.release = release

    def __call__(self, state: WorkflowState) -> None:
        pass

    def close(self) -> None:
        if self.release is not None:
            assert self.release.wait(30)


@pytest.mark.django_db(transaction=True)
def test_resume_right_after_the_file_says_failed_is_not_run_locked(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wfstate import index

    settings.WFSTATE = {**settings.WFSTATE, "INDEX_ON_WRITE": True}
    release = threading.Event()
    made: list[_SlowListener] = []

    def make_listener(**kwargs: Any) -> _SlowListener:
        # The first execution's index flush hangs until the test says so.
        made.append(_SlowListener(release if not made else None))
        return made[-1]

    monkeypatch.setattr(index, "make_listener", make_listener)
    state, _ = runs.create_run("fails")
    errors: list[BaseException] = []

    def first_execution() -> None:
        try:
            runs.execute(state.workflow_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=first_execution)
    worker.start()
    try:
        wait_for(lambda: _on_disk(state.workflow_id)["status"] == "failed", 30, "failed on disk")
        resumed = runs.resume_run(state.workflow_id)  # at once: no RunLocked
        assert resumed.status == RunStatus.FAILED
        assert resumed.history[-1]["previous_status"] == "failed"
    finally:
        release.set()
        worker.join(30)
    assert not errors


def test_resume_waits_for_a_holder_whose_run_already_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tiny window between the final save and the lock's release."""
    store = get_store()
    state = runs.start_run("fails")
    real_run_lock = store.run_lock
    attempts: list[float] = []
    holding = threading.Event()

    def counting_run_lock(workflow_id: str) -> Any:
        if holding.is_set():
            attempts.append(time.monotonic())
        return real_run_lock(workflow_id)

    monkeypatch.setattr(store, "run_lock", counting_run_lock)

    def holder() -> None:
        with real_run_lock(state.workflow_id):
            holding.set()
            # Let go only once the resume has tried (and found the lock held).
            wait_for(lambda: attempts, 30, "the resume to try the run lock")

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        holding.wait(30)
        resumed = runs.resume_run(state.workflow_id)
        assert resumed.status == RunStatus.FAILED
        assert len(attempts) >= 2  # refused once, then taken
    finally:
        thread.join(30)


def test_a_running_run_with_a_live_executor_is_still_refused_at_once() -> None:
    store = get_store()
    state, _ = runs.create_run("fails")
    with store.run_lock(state.workflow_id):
        started = time.monotonic()
        with pytest.raises(RunLocked):
            runs.resume_run(state.workflow_id)
        assert time.monotonic() - started < 2


# --- parallel blocks: what a resume keeps ----------------------------------------------------


def _interrupted_fanout(tmp_path: Path) -> WorkflowState:
    """A fanout-crash run as a SIGKILL between its branches leaves it (built in memory)."""
    state, _ = runs.create_run("fanout-crash", {"dir": str(tmp_path)})
    store = get_store()

    def crash(s: WorkflowState) -> None:
        s.status = RunStatus.RUNNING
        s.current_state = "branches"
        s.states["branches"] = StepResult(
            name="branches", status=StepStatus.RUNNING, started_at=utcnow()
        )
        s.states["quick"] = StepResult(
            name="quick",
            status=StepStatus.COMPLETED,
            output="",
            exit_code=0,
            started_at=utcnow(),
            completed_at=utcnow(),
        )
        s.states["slow"] = StepResult(name="slow", status=StepStatus.RUNNING, started_at=utcnow())

    return store.update(state.workflow_id, crash)


def test_resume_from_current_keeps_completed_branches_and_from_the_block_does_not(
    tmp_path: Path,
) -> None:
    state = _interrupted_fanout(tmp_path)
    (tmp_path / "release").write_text("ok")
    final = runs.resume_run(state.workflow_id)
    assert final.status == RunStatus.COMPLETED
    assert not (tmp_path / "quick.count").exists()  # kept, not run again
    assert (tmp_path / "slow.count").read_text().count("ran") == 1
    assert final.history[-1]["kept"] == ["quick"]
    assert [r["name"] for r in final.history[-1]["rewound"]] == ["branches", "slow"]
    assert final.states["branches"].output == {"quick": "completed", "slow": "completed"}
    # --from the block itself runs every branch again.
    again = runs.resume_run(state.workflow_id, from_state="branches")
    assert again.status == RunStatus.COMPLETED and again.history[-1]["kept"] == []
    assert (tmp_path / "quick.count").read_text().count("ran") == 1


def test_branches_from_an_earlier_pass_through_the_block_are_not_kept(tmp_path: Path) -> None:
    state = _interrupted_fanout(tmp_path)

    def earlier(s: WorkflowState) -> None:
        # quick's entry predates the block's current start: an earlier pass (a loop).
        s.states["quick"].started_at = "2000-01-01T00:00:00.000000Z"

    get_store().update(state.workflow_id, earlier)
    (tmp_path / "release").write_text("ok")
    final = runs.resume_run(state.workflow_id)
    assert final.history[-1]["kept"] == []
    assert (tmp_path / "quick.count").read_text().count("ran") == 1  # ran again
    assert final.states["branches"].output == {"quick": "completed", "slow": "completed"}


def test_prepare_resume_keeps_only_completed_branches_of_the_current_block(
    tmp_path: Path,
) -> None:
    state = _interrupted_fanout(tmp_path)
    definition = runs.get_definition("fanout-crash")
    prepare_resume(state, definition)
    assert state.history[-1]["kept"] == ["quick"]
    assert set(state.states) == {"quick"} and state.current_state == "branches"


def test_non_finite_retry_numbers_are_refused_at_load(tmp_path: Path) -> None:
    from wfstate.definitions.registry import resolve_definition
    from wfstate.exceptions import InvalidDefinition

    path = tmp_path / "infretry.yaml"
    path.write_text(
        "name: infretry\nstates:\n  initial: a\n"
        "  a: {type: step, command: 'true', on_success: done,\n"
        "      retry: {max_attempts: 2, multiplier: .inf, jitter: .nan}}\n"
        "  done: {type: terminal, status: success}\n"
    )
    with pytest.raises(InvalidDefinition) as info:
        resolve_definition(str(path))
    messages = [e["message"] for e in info.value.errors]
    assert "retry.multiplier must be a finite number, not inf" in messages
    assert "retry.jitter must be a finite number, not nan" in messages
