"""The engine across real processes: SIGKILL mid-step and resume, two resumes racing,
cancellation and SIGTERM killing a step's whole process group."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.engine_helpers import manage, pid_alive, spawn, wait_for
from wfstate import runs

pytestmark = pytest.mark.slow


def _doc(storage: Path, workflow_id: str) -> dict[str, Any]:
    return orjson.loads((storage / "states" / f"{workflow_id}.json").read_bytes())


def _only_run(storage: Path) -> str:
    files = wait_for(lambda: list((storage / "states").glob("*.json")), 30, "a state file")
    assert len(files) == 1
    return files[0].stem


def _crashed_crash20(tmp_path: Path) -> tuple[Path, Path, str]:
    """A crash20 run SIGKILLed in the middle of its step s10."""
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    proc = spawn(storage, "run_workflow", "crash20", "--input", f"dir={work}")
    wait_for(lambda: (work / "s10.count").exists(), 60, "step s10 to start")
    workflow_id = _only_run(storage)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return storage, work, workflow_id


def test_sigkill_mid_step_then_resume_reruns_only_the_killed_step(tmp_path: Path) -> None:
    storage, work, workflow_id = _crashed_crash20(tmp_path)
    crashed = _doc(storage, workflow_id)
    assert crashed["status"] == "running" and crashed["current_state"] == "s10"
    assert crashed["states"]["s10"]["status"] == "running"
    assert crashed["states"]["s09"]["status"] == "completed"

    (work / "release").touch()
    result = manage(storage, "resume_workflow", workflow_id, "--json")
    assert result.returncode == 0, result.stderr
    final = orjson.loads(result.stdout)
    assert final["status"] == "completed"
    assert final["workflow_id"] == workflow_id and final["started_at"] == crashed["started_at"]
    counts = {
        f"s{i:02d}": (work / f"s{i:02d}.count").read_text().count("ran") for i in range(1, 21)
    }
    assert counts.pop("s10") == 2  # the killed step ran again
    assert set(counts.values()) == {1}  # completed steps did not
    # The interrupted attempt is kept in history, not discarded.
    assert final["history"][-1]["rewound"][0]["name"] == "s10"
    assert final["history"][-1]["rewound"][0]["status"] == "running"


def test_two_resumes_started_together_exactly_one_executes(tmp_path: Path) -> None:
    storage, work, workflow_id = _crashed_crash20(tmp_path)
    first = spawn(storage, "resume_workflow", workflow_id)
    second = spawn(storage, "resume_workflow", workflow_id)
    procs = {first.pid: first, second.pid: second}

    def one_exited() -> Any:
        return [p for p in procs.values() if p.poll() is not None]

    loser = wait_for(one_exited, 60, "one resume to give up")[0]
    winner = next(p for p in procs.values() if p is not loser)
    _, err = loser.communicate()
    assert loser.returncode == 4, err
    assert f"pid {winner.pid} on {os.uname().nodename}" in err
    (work / "release").touch()
    winner.communicate(timeout=60)
    assert winner.returncode == 0
    assert (work / "s10.count").read_text().count("ran") == 2  # once killed, once resumed


def _start_sleeper(tmp_path: Path) -> tuple[Path, Path, str, Any]:
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir(exist_ok=True)
    proc = spawn(storage, "run_workflow", "sleeper", "--input", f"dir={work}")
    wait_for(lambda: (work / "child.pid").exists() and (work / "started").exists(), 60, "the step")
    workflow_id = _only_run(storage)
    return storage, work, workflow_id, proc


def _assert_cancelled_within_2s(storage: Path, workflow_id: str, work: Path) -> None:
    wait_for(lambda: _doc(storage, workflow_id)["status"] == "cancelled", 2.0, "status cancelled")
    doc = _doc(storage, workflow_id)
    assert doc["states"]["nap"]["status"] == "cancelled"
    child = int((work / "child.pid").read_text())
    wait_for(lambda: not pid_alive(child), 2.0, "the step's own child process to die")


def test_cancel_kills_the_process_group_then_the_run_resumes(tmp_path: Path, settings: Any) -> None:
    storage, work, workflow_id, proc = _start_sleeper(tmp_path)
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": storage, "INDEX_ON_WRITE": False}
    outcome, _ = runs.cancel_run(workflow_id)
    assert outcome == "requested"
    _assert_cancelled_within_2s(storage, workflow_id, work)
    proc.communicate(timeout=10)
    assert proc.returncode == 3

    # The cancelled run resumes: the step starts again...
    (work / "started").unlink()
    (work / "child.pid").unlink()
    resumed = spawn(storage, "resume_workflow", workflow_id)
    wait_for(lambda: (work / "child.pid").exists() and (work / "started").exists(), 60, "resume")
    assert _doc(storage, workflow_id)["status"] == "running"
    assert _doc(storage, workflow_id)["history"][-1]["previous_status"] == "cancelled"
    # ... and the cancel_workflow command stops it again.
    result = manage(storage, "cancel_workflow", workflow_id, "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["outcome"] == "requested"
    _assert_cancelled_within_2s(storage, workflow_id, work)
    resumed.communicate(timeout=10)


def test_sigterm_to_the_executor_cancels_the_run(tmp_path: Path) -> None:
    storage, work, workflow_id, proc = _start_sleeper(tmp_path)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _assert_cancelled_within_2s(storage, workflow_id, work)
    proc.communicate(timeout=10)
    assert proc.returncode == 3
    assert time.monotonic() - started < 10


def test_recover_workflows_finishes_a_crashed_run(tmp_path: Path) -> None:
    storage, work, workflow_id = _crashed_crash20(tmp_path)
    (work / "release").touch()
    result = manage(storage, "recover_workflows", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["recovered"] == {workflow_id: "completed"}
    doc = _doc(storage, workflow_id)
    assert doc["status"] == "completed"
    assert doc["history"][-1]["event"] == "recover"
    assert (work / "s09.count").read_text().count("ran") == 1
    assert (work / "s10.count").read_text().count("ran") == 2
    # Nothing left to recover: a second pass does nothing.
    again = manage(storage, "recover_workflows", "--json")
    assert orjson.loads(again.stdout)["recovered"] == {}


def test_recover_detached_keeps_the_interrupted_step_in_history(
    tmp_path: Path, settings: Any
) -> None:
    storage, work, workflow_id = _crashed_crash20(tmp_path)
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": storage, "INDEX_ON_WRITE": False}
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
    (work / "release").touch()
    assert runs.recover_runs(detach=True) == [workflow_id]
    doc = _doc(storage, workflow_id)
    assert doc["status"] == "completed"
    assert doc["history"][-1]["event"] == "recover"
    assert doc["history"][-1]["rewound"][0]["name"] == "s10"
    assert (work / "s10.count").read_text().count("ran") == 2
