"""Runs that wait (wfstate/engine/waits.py): wait and sleep steps, signals, timeouts.

Parking is proved with real processes: ``run_workflow`` exits, and the run lock is
free (this test takes it). Waking is proved with a real ``db_worker``.
"""

from __future__ import annotations

import logging
import signal
import time
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import call_command

from tests.helpers import call, manage, spawn, wait_for
from wfstate import runs
from wfstate.definitions import loads_definition
from wfstate.exceptions import InvalidDefinition, InvalidSignal, SignalRefused
from wfstate.state import RunStatus, StepStatus, parse_time
from wfstate.stores import get_store

pytestmark = [pytest.mark.django_db(transaction=True)]


@pytest.fixture
def storage(settings: Any, tmp_path: Path) -> Path:
    path = tmp_path / "storage"
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": path}
    return path


def start_worker(storage: Path) -> Any:
    return spawn(
        storage,
        "db_worker",
        "--no-reload",
        "--no-startup-delay",
        "--interval",
        "0.1",
        WFSTATE_INDEX_ON_WRITE="1",
    )


def stop_worker(proc: Any) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=20)
    except Exception:
        proc.kill()
        proc.communicate()


@pytest.fixture
def worker(storage: Path) -> Any:
    proc = start_worker(storage)
    yield proc
    stop_worker(proc)


def assert_nobody_holds(workflow_id: str) -> None:
    """No process holds the run lock: proved by taking it (it never waits)."""
    store = get_store()
    assert store.run_lock_owner(workflow_id) is None
    with store.run_lock(workflow_id):
        pass


def status_of(workflow_id: str) -> RunStatus:
    return runs.load_run(workflow_id).status


def wait_status(workflow_id: str, status: RunStatus, timeout: float = 60) -> Any:
    """Wait for the file to say ``status``, then for the worker's index row to follow
    (it is written after the run lock is released): no row lands after this test."""
    from wfstate.models import WorkflowRun

    wait_for(lambda: status_of(workflow_id) == status, timeout, f"run {workflow_id} {status}")
    wait_for(
        lambda: WorkflowRun.objects.filter(workflow_id=workflow_id, status=status).exists(),
        30,
        f"the index row of {workflow_id} to say {status}",
    )
    return runs.load_run(workflow_id)


# --- parking ---------------------------------------------------------------------------------


def test_a_run_reaching_a_wait_step_parks_and_its_process_exits(storage: Path) -> None:
    started = time.monotonic()
    done = manage(storage, "run_workflow", "approval", "--json", timeout=60)
    assert done.returncode == 0, done.stderr  # SPEC §11: a run that parks exits 0
    assert time.monotonic() - started < 50  # it did not wait for the 1 h timeout
    payload = orjson.loads(done.stdout)
    workflow_id = payload["workflow_id"]
    assert payload["status"] == "waiting"
    state = runs.load_run(workflow_id)
    assert state.status == RunStatus.WAITING
    assert state.current_state == "approve"
    assert state.states["approve"].status == StepStatus.WAITING
    assert state.states["prepare"].status == StepStatus.COMPLETED
    waiting = state.waiting_for
    assert waiting is not None
    assert (waiting["kind"], waiting["state"], waiting["signal"]) == (
        "signal",
        "approve",
        "approval",
    )
    # Stored in UTC; the wait's timeout (1 h) counts from when the run got there.
    until, since = parse_time(waiting["until"]), parse_time(waiting["since"])
    assert until is not None and since is not None
    assert until.tzinfo == UTC and waiting["until"].endswith("Z")
    assert abs((until - since).total_seconds() - 3600) < 1
    assert_nobody_holds(workflow_id)


def test_signal_wakes_and_the_payload_chooses_the_branch(storage: Path) -> None:
    state = runs.start_run("approval")
    assert state.status == RunStatus.WAITING
    record, _ = runs.signal_run(
        state.workflow_id, "approval", {"approved": False}, sender={"kind": "python", "user": "ann"}
    )
    # No worker here: the run waits until executed (the task backend's job).
    assert status_of(state.workflow_id) == RunStatus.WAITING
    done = runs.execute(state.workflow_id)
    assert done.status == RunStatus.FAILED
    assert done.current_state == "rejected"
    approve = done.states["approve"]
    assert approve.status == StepStatus.COMPLETED
    assert approve.output == approve.payload == {"approved": False}
    assert approve.signal == "approval"
    assert approve.signal_id == record["id"]
    assert approve.sender == {"kind": "python", "user": "ann"}
    assert approve.received_at == record["received_at"]
    assert "ship" not in done.states
    assert done.waiting_for is None
    assert get_store().pending_signals(state.workflow_id) == []
    # Nothing is left of the mailbox once its signals are taken.
    assert not get_store().mailbox_dir(state.workflow_id).exists()  # type: ignore[attr-defined]


def test_a_payload_failing_the_schema_is_refused_and_changes_nothing(storage: Path) -> None:
    state = runs.start_run("approval")
    before = get_store().read_bytes(state.workflow_id)  # type: ignore[attr-defined]
    with pytest.raises(InvalidSignal, match="approved"):
        runs.signal_run(state.workflow_id, "approval", {"approved": "yes please"})
    with pytest.raises(InvalidSignal):
        runs.signal_run(state.workflow_id, "approval", {"comment": "no approved key"})
    assert get_store().read_bytes(state.workflow_id) == before  # type: ignore[attr-defined]
    assert get_store().pending_signals(state.workflow_id) == []


def test_signals_nothing_can_take_are_refused(storage: Path) -> None:
    state = runs.start_run("approval")
    with pytest.raises(SignalRefused, match="no wait step"):
        runs.signal_run(state.workflow_id, "nonsense", {})
    runs.signal_run(state.workflow_id, "approval", {"approved": True})
    assert runs.execute(state.workflow_id).status == RunStatus.COMPLETED
    # The step took its signal and the run ended: a second one is never applied.
    with pytest.raises(SignalRefused, match="already ended completed"):
        runs.signal_run(state.workflow_id, "approval", {"approved": False})
    assert runs.load_run(state.workflow_id).states["approve"].payload == {"approved": True}


def test_a_second_signal_for_the_same_step_is_kept_never_applied_twice(storage: Path) -> None:
    state = runs.start_run("approval")
    first, _ = runs.signal_run(state.workflow_id, "approval", {"approved": True, "comment": "1"})
    second, _ = runs.signal_run(state.workflow_id, "approval", {"approved": False})
    assert first["sender"] == {"kind": "python", "user": None}  # the default sender
    done = runs.execute(state.workflow_id)
    assert done.status == RunStatus.COMPLETED
    assert done.states["approve"].signal_id == first["id"]
    # The second is kept (a later wait could take it), never applied to this step.
    assert [r["id"] for r in get_store().pending_signals(state.workflow_id)] == [second["id"]]
    again = runs.execute(state.workflow_id)  # a duplicate wake-up of the finished run
    assert again.states["approve"].signal_id == first["id"]


def test_a_signal_taken_before_a_crash_is_not_taken_again(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = runs.start_run("approval")
    record, _ = runs.signal_run(state.workflow_id, "approval", {"approved": True})
    store = get_store()
    # A crash between the checkpoint that records the signal and the unlink of its file.
    monkeypatch.setattr(type(store), "remove_signal", lambda self, wid, sid: None)
    assert runs.execute(state.workflow_id).status == RunStatus.COMPLETED
    monkeypatch.undo()
    assert [r["id"] for r in store.pending_signals(state.workflow_id)] == [record["id"]]
    # Back to the wait step: the leftover file's id is in the state (in history now),
    # so it is skipped and removed, and the run waits for a new signal.
    resumed = runs.resume_run(state.workflow_id, from_state="approve")
    assert resumed.status == RunStatus.WAITING
    assert store.pending_signals(state.workflow_id) == []
    assert resumed.states["approve"].status == StepStatus.WAITING


def test_a_signal_sent_before_the_wait_step_is_taken_there(storage: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    proc = spawn(storage, "run_workflow", "early_signal", "--json", "--input", f"gate={gate}")
    try:
        workflow_id = wait_for(
            lambda: next(iter(get_store().list()), None), 60, "the run to be created"
        )
        wait_for(lambda: runs.load_run(workflow_id).current_state == "work", 60, "the first step")
        assert status_of(workflow_id) == RunStatus.RUNNING
        record, _ = runs.signal_run(workflow_id, "go", {"n": 7})
        gate.touch()
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    state = runs.load_run(workflow_id)
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.states["confirm"].signal_id == record["id"]
    assert state.states["done"].output == "n=7"
    assert get_store().pending_signals(workflow_id) == []


def test_a_signal_arriving_while_the_run_parks_is_not_lost(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender sees the run not yet waiting (no wake-up enqueued); the executor sees
    an empty mailbox: after releasing the run lock it looks again and wakes the run."""
    from wfstate.engine import waits

    woken: list[str] = []
    monkeypatch.setattr("wfstate.tasks.enqueue_execution", lambda wid: woken.append(wid) or "x")
    state, _ = runs.create_run("approval")
    real_park = waits._park

    def park_then_signal(*args: Any, **kwargs: Any) -> None:
        # The signal lands just before the parking checkpoint (the run is "running").
        runs.signal_run(state.workflow_id, "approval", {"approved": True})
        assert woken == []  # the sender did not wake it: it was not waiting yet
        real_park(*args, **kwargs)

    monkeypatch.setattr(waits, "_park", park_then_signal)
    parked = runs.execute(state.workflow_id)
    assert parked.status == RunStatus.WAITING
    assert woken == [state.workflow_id]


def test_cancelling_a_waiting_run(storage: Path) -> None:
    state = runs.start_run("approval")
    outcome, cancelled = runs.cancel_run(state.workflow_id)
    assert outcome == "cancelled"
    assert cancelled.status == RunStatus.CANCELLED
    assert cancelled.states["approve"].status == StepStatus.CANCELLED
    assert cancelled.waiting_for is None
    with pytest.raises(SignalRefused):
        runs.signal_run(state.workflow_id, "approval", {"approved": True})


def test_the_index_shows_waiting_runs(storage: Path) -> None:
    from wfstate.models import WorkflowRun

    state = runs.start_run("approval")
    row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
    assert row.status == "waiting"
    assert row.current_state == "approve"


def test_signal_workflow_command(storage: Path) -> None:
    state = runs.start_run("approval")
    code, _out, message = call("signal_workflow", state.workflow_id, "approval", "--payload", "[")
    assert code == 1 and "not valid JSON" in message
    code, _out, message = call(
        "signal_workflow", state.workflow_id, "approval", "--payload", '{"approved": 1}'
    )
    assert code == 1 and "schema" in message
    code, out, _ = call(
        "signal_workflow",
        state.workflow_id,
        "approval",
        "--payload",
        '{"approved": true}',
        "--json",
    )
    assert code == 0
    body = orjson.loads(out)
    assert body["signal"] == "approval" and body["sender"]["kind"] == "command"
    assert runs.execute(state.workflow_id).status == RunStatus.COMPLETED
    code, _out, message = call("signal_workflow", state.workflow_id, "approval")
    assert code == 1 and "refused" in message


def test_workflow_status_says_what_a_run_waits_for(storage: Path) -> None:
    state = runs.start_run("approval")
    code, out, _ = call("workflow_status", state.workflow_id)
    assert code == 0
    assert "status    waiting" in out
    assert "waiting   for signal 'approval' at 'approve' until " in out


# --- definitions -------------------------------------------------------------------------------


def test_invalid_wait_and_sleep_definitions_are_reported() -> None:
    text = """
name: bad_waits
states:
  initial: a
  a: {type: wait, signal: x, on_timeout: done, on_success: b, schema: {type: 12}}
  b: {type: sleep, on_success: c}
  c: {type: sleep, duration: 1s, until: "2026-01-01T00:00:00Z", on_success: d}
  d: {type: wait, on_success: done}
  done: {type: terminal}
"""
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(text)
    message = str(info.value)
    assert "'on_timeout' needs a 'timeout'" in message
    assert "invalid payload schema" in message
    assert message.count("a sleep needs either 'duration'") == 2
    assert "'signal' is required" in message


def test_wait_steps_are_drawn_with_their_timeout_route() -> None:
    definition = runs.get_definition("approval")
    graph = definition.graph()
    (node,) = [n for n in graph["nodes"] if n["id"] == "approve"]
    assert node["type"] == "wait"
    assert {"source": "approve", "target": "expired", "kind": "timeout", "label": ""} in (
        graph["edges"]
    )


# --- timers: sleep and timeouts, with a real worker ----------------------------------------------


@pytest.mark.slow
def test_sleep_parks_with_no_process_and_a_worker_wakes_it_on_time(
    storage: Path, worker: Any
) -> None:
    done = manage(storage, "run_workflow", "nap", "--json", timeout=60)
    assert done.returncode == 0, done.stderr
    workflow_id = orjson.loads(done.stdout)["workflow_id"]
    state = runs.load_run(workflow_id)
    if state.status == RunStatus.WAITING:  # (a very slow machine may be past 3 s already)
        assert state.waiting_for is not None and state.waiting_for["kind"] == "time"
        assert_nobody_holds(workflow_id)
    state = wait_status(workflow_id, RunStatus.COMPLETED)
    nap = state.states["nap"]
    slept = (parse_time(nap.completed_at) - parse_time(nap.started_at)).total_seconds()  # type: ignore[operator]
    assert 3.0 <= slept <= 4.0, slept  # 3 s later, ±1 s
    assert set(nap.output) == {"until"}


@pytest.mark.slow
def test_a_sleep_that_fell_due_while_the_worker_was_down_ends_when_it_is_back(
    storage: Path,
) -> None:
    state = runs.start_run("nap")
    assert state.status == RunStatus.WAITING
    until = parse_time(state.waiting_for["until"])  # type: ignore[index]
    assert until is not None
    wait_for(lambda: datetime.now(UTC) > until + timedelta(seconds=1), 30, "the sleep to end")
    assert status_of(state.workflow_id) == RunStatus.WAITING  # nobody to wake it
    back = datetime.now(UTC)
    proc = start_worker(storage)
    try:
        done = wait_status(state.workflow_id, RunStatus.COMPLETED)
    finally:
        stop_worker(proc)
    completed = parse_time(done.completed_at)
    assert completed is not None and completed >= back


@pytest.mark.slow
def test_recover_wakes_a_due_run_whose_wake_up_was_lost_and_leaves_others(
    storage: Path,
) -> None:
    from django_tasks_db.models import DBTaskResult

    napping = runs.start_run("nap")
    far = (datetime.now(UTC) + timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = runs.start_run("nap_until", {"deadline": far})
    asking = runs.start_run("approval")
    assert {status_of(r.workflow_id) for r in (napping, later, asking)} == {RunStatus.WAITING}
    assert DBTaskResult.objects.count() == 3  # each timer scheduled a wake-up task
    DBTaskResult.objects.all().delete()  # ... which got lost
    until = parse_time(napping.waiting_for["until"])  # type: ignore[index]
    assert until is not None
    # Not due yet: recover leaves every waiting run alone.
    out = StringIO()
    call_command("recover_workflows", stdout=out)
    if datetime.now(UTC) < until:
        assert status_of(napping.workflow_id) == RunStatus.WAITING
    wait_for(lambda: datetime.now(UTC) > until, 30, "the sleep to fall due")
    revisions = {r.workflow_id: runs.load_run(r.workflow_id).revision for r in (later, asking)}
    call_command("recover_workflows", stdout=out)
    assert status_of(napping.workflow_id) == RunStatus.COMPLETED
    for run in (later, asking):
        state = runs.load_run(run.workflow_id)
        assert state.status == RunStatus.WAITING
        assert state.revision == revisions[run.workflow_id]  # not even touched


@pytest.mark.slow
def test_recover_wakes_a_waiting_run_whose_signal_wake_up_was_lost(
    storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = runs.start_run("approval")
    monkeypatch.setattr("wfstate.tasks.enqueue_execution", lambda wid: "lost")
    runs.signal_run(state.workflow_id, "approval", {"approved": True})
    monkeypatch.undo()
    assert status_of(state.workflow_id) == RunStatus.WAITING
    call_command("recover_workflows", stdout=StringIO())
    assert status_of(state.workflow_id) == RunStatus.COMPLETED


@pytest.mark.slow
def test_a_wait_with_a_timeout_and_no_signal_takes_on_timeout(storage: Path, worker: Any) -> None:
    state = runs.start_run("expiring")
    assert state.status == RunStatus.WAITING
    done = wait_status(state.workflow_id, RunStatus.FAILED)
    assert done.current_state == "expired"
    assert done.error == "expired"
    answer = done.states["answer"]
    assert answer.status == StepStatus.FAILED
    assert answer.signal is None
    assert "timed out" in (answer.error or "")
    waited = (parse_time(answer.completed_at) - parse_time(answer.started_at)).total_seconds()  # type: ignore[operator]
    assert 2.0 <= waited <= 4.0, waited
    with pytest.raises(SignalRefused):
        runs.signal_run(state.workflow_id, "answer", {})


def test_sleep_until_an_iso_time(storage: Path) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    assert runs.start_run("nap_until", {"deadline": past}).status == RunStatus.COMPLETED
    soon = datetime.now(UTC) + timedelta(hours=1)
    state = runs.start_run("nap_until", {"deadline": soon.strftime("%Y-%m-%dT%H:%M:%S")})
    assert state.status == RunStatus.WAITING  # a time without a zone is UTC
    until = parse_time(state.waiting_for["until"])  # type: ignore[index]
    assert until is not None and abs((until - soon).total_seconds()) < 1
    bad = runs.start_run("nap_until", {"deadline": "next tuesday"})
    assert bad.status == RunStatus.FAILED
    assert "not an ISO 8601 time" in (bad.error or "")


def test_a_backend_that_cannot_defer_logs_and_leaves_waking_to_recover(
    storage: Path, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
    with caplog.at_level(logging.WARNING, logger="wfstate.tasks"):
        state = runs.start_run("nap")
    assert state.status == RunStatus.WAITING
    assert "cannot defer" in caplog.text and "recover_workflows" in caplog.text
    # A signal wakes at once, even there (the immediate backend runs it inline).
    asking = runs.start_run("approval")
    runs.signal_run(asking.workflow_id, "approval", {"approved": True})
    assert status_of(asking.workflow_id) == RunStatus.COMPLETED


def test_a_premature_wake_up_changes_nothing(storage: Path) -> None:
    state = runs.start_run("approval")
    before = runs.load_run(state.workflow_id).revision
    runs.execute(state.workflow_id)  # a duplicate task, or a signal for a later step
    after = runs.load_run(state.workflow_id)
    assert after.status == RunStatus.WAITING
    assert after.revision == before
