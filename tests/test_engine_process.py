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

from tests.helpers import manage, pid_alive, spawn, wait_for
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


def test_sigkill_inside_a_parallel_block_then_resume_reruns_only_unfinished_branches(
    tmp_path: Path,
) -> None:
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    proc = spawn(storage, "run_workflow", "fanout-crash", "--input", f"dir={work}")
    workflow_id = _only_run(storage)

    def quick_done_slow_running() -> bool:
        try:
            states = _doc(storage, workflow_id)["states"]
        except (OSError, ValueError):
            return False
        return (
            states.get("quick", {}).get("status") == "completed"
            and states.get("slow", {}).get("status") == "running"
            and (work / "slow.count").exists()
        )

    wait_for(quick_done_slow_running, 60, "quick completed while slow runs")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    crashed = _doc(storage, workflow_id)
    assert crashed["status"] == "running" and crashed["current_state"] == "branches"

    # A resume killed in turn while slow runs again: the next resume still keeps quick.
    again = spawn(storage, "resume_workflow", workflow_id)
    wait_for(
        lambda: (work / "slow.count").read_text().count("ran") == 2 and quick_done_slow_running(),
        60,
        "slow to run again",
    )
    again.send_signal(signal.SIGKILL)
    again.wait(10)
    assert (work / "quick.count").read_text().count("ran") == 1

    # On resume slow fails: under any_succeed the block succeeds only if the strategy
    # still counts quick's result from before the crash.
    (work / "release").write_text("fail")
    result = manage(storage, "resume_workflow", workflow_id, "--json")
    assert result.returncode == 0, result.stderr
    final = orjson.loads(result.stdout)
    assert final["status"] == "completed" and final["current_state"] == "done"
    assert (work / "quick.count").read_text().count("ran") == 1  # completed: not run again
    assert (work / "slow.count").read_text().count("ran") == 3  # killed twice: run again
    assert final["states"]["branches"]["output"] == {"quick": "completed", "slow": "failed"}
    assert final["states"]["quick"] == crashed["states"]["quick"]  # the very same result
    event = final["history"][-1]
    assert event["kept"] == ["quick"]
    assert sorted(r["name"] for r in event["rewound"]) == ["branches", "slow"]


def test_recover_reports_an_unrecoverable_run_and_still_recovers_the_next(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "storage"
    crashed: list[tuple[str, Path]] = []
    for n in range(2):
        work = tmp_path / f"work{n}"
        work.mkdir()
        proc = spawn(storage, "run_workflow", "crash20", "--input", f"dir={work}")
        wait_for(lambda w=work: (w / "s10.count").exists(), 60, "step s10 to start")
        known = {wid for wid, _ in crashed}
        ids = wait_for(
            lambda k=known: [
                p.stem for p in (storage / "states").glob("*.json") if p.stem not in k
            ],
            30,
            "the new run's file",
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        crashed.append((ids[0], work))
    # Recovery walks runs in id order: the first one it meets is the unrecoverable one.
    (bad, bad_work), (good, good_work) = sorted(crashed)
    path = storage / "states" / f"{bad}.json"
    doc = orjson.loads(path.read_bytes())
    # A file that names a state its workflow does not have (edited, or a definition that
    # changed under a run whose file carries no sha256).
    doc["current_state"] = "s10_gone"
    doc["states"]["s10_gone"] = {**doc["states"].pop("s10"), "name": "s10_gone"}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    before = path.read_bytes()

    (bad_work / "release").touch()
    (good_work / "release").touch()
    result = manage(storage, "recover_workflows", "--json")
    assert result.returncode == 1, result.stderr  # a refused resume: exit 1
    report = orjson.loads(result.stdout)
    assert report["recovered"] == {good: "completed"}
    assert list(report["errors"]) == [bad]
    assert report["errors"][bad]["code"] == "not_resumable"
    assert "no state 's10_gone'" in report["errors"][bad]["message"]
    assert f"could not be recovered: {bad}" in result.stderr
    assert _doc(storage, good)["status"] == "completed"
    assert path.read_bytes() == before  # refused: the bad run's file is untouched

    # Without --json: a line per run, and the same exit code.
    text = manage(storage, "recover_workflows")
    assert text.returncode == 1
    assert f"run {bad}: error: " in text.stdout and good not in text.stdout
