"""Loops across real processes: an executor SIGKILLed in iteration 7 of 10 resumes in
iteration 7; iterations that finished never run again (plain, nested, parallel loops)."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import manage, spawn, wait_for
from wfstate.stores import records

pytestmark = pytest.mark.slow


def _doc(storage: Path, workflow_id: str) -> dict[str, Any]:
    return orjson.loads((storage / "states" / f"{workflow_id}.json").read_bytes())


def _only_run(storage: Path) -> str:
    files = wait_for(lambda: list((storage / "states").glob("*.json")), 30, "a state file")
    assert len(files) == 1
    return files[0].stem


def _log(work: Path) -> list[str]:
    path = work / "log"
    return path.read_text().split() if path.exists() else []


def _crash_and_resume(
    tmp_path: Path, workflow: str, running: Any
) -> tuple[dict[str, Any], dict[str, Any], Counter[str], Path, str]:
    """Start ``workflow``, SIGKILL it once ``running(storage, work, id)`` holds, resume it."""
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    proc = spawn(storage, "run_workflow", workflow, "--input", f"dir={work}")
    workflow_id = _only_run(storage)
    wait_for(lambda: running(storage, work, workflow_id), 90, "iteration 7 to be running")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    crashed = _doc(storage, workflow_id)
    (work / "release").touch()
    result = manage(storage, "resume_workflow", workflow_id, "--json")
    assert result.returncode == 0, result.stderr
    final = orjson.loads(result.stdout)
    return crashed, final, Counter(_log(work)), storage, workflow_id


def _side_file(storage: Path, workflow_id: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    path = storage / "states" / f"{workflow_id}.loops" / f"{summary['file']}.log"
    found, size = records.decode(path.read_bytes())
    assert size == path.stat().st_size  # no torn or stray record left behind
    return found


def test_sigkill_in_iteration_7_resumes_in_iteration_7(tmp_path: Path) -> None:
    def seventh_running(storage: Path, work: Path, workflow_id: str) -> bool:
        return "7" in _log(work)

    crashed, final, counts, storage, workflow_id = _crash_and_resume(
        tmp_path, "loop_crash", seventh_running
    )
    loop = crashed["states"]["each"]
    assert crashed["status"] == "running" and crashed["current_state"] == "each"
    assert loop["status"] == "running"
    assert loop["loop"]["done"] == 6 and list(loop["loop"]["running"]) == ["6"]
    assert loop["loop"]["running"]["6"]["step"] == "work"

    assert final["status"] == "completed", final["error"]
    assert final["workflow_id"] == workflow_id and final["started_at"] == crashed["started_at"]
    assert {str(i): counts[str(i)] for i in range(1, 11)} == {
        **{str(i): 1 for i in range(1, 11)},
        "7": counts["7"],
    }
    assert 1 <= counts["7"] <= 2
    summary = final["states"]["each"]["loop"]
    assert summary["done"] == 10 and summary["running"] == {}
    iterations = [r for r in _side_file(storage, workflow_id, summary) if r["kind"] == "iteration"]
    assert [r["index"] for r in iterations] == list(range(10))
    assert [r["states"]["work"]["status"] for r in iterations] == ["completed"] * 10


def test_sigkill_in_a_nested_loop_resumes_in_its_iteration(tmp_path: Path) -> None:
    def b7_running(storage: Path, work: Path, workflow_id: str) -> bool:
        return "b-7" in _log(work)

    crashed, final, counts, storage, workflow_id = _crash_and_resume(
        tmp_path, "loop_crash_nested", b7_running
    )
    outer, inner = crashed["states"]["outer"]["loop"], crashed["states"]["inner"]["loop"]
    assert outer["done"] == 1 and list(outer["running"]) == ["1"]
    assert outer["running"]["1"]["step"] == "inner"
    assert inner["done"] == 6 and list(inner["running"]) == ["6"]

    assert final["status"] == "completed", final["error"]
    expected = [f"{o}-{i}" for o in "ab" for i in range(1, 11)] + ["a-after", "b-after"]
    assert set(counts) == set(expected)
    assert 1 <= counts.pop("b-7") <= 2
    assert set(counts.values()) == {1}
    # Every iteration of every inner loop is kept: the outer records name their inner
    # loop's side file.
    outer_records = [
        r
        for r in _side_file(storage, workflow_id, final["states"]["outer"]["loop"])
        if r["kind"] == "iteration"
    ]
    assert [r["item"] for r in outer_records] == ["a", "b"]
    for record, name in zip(outer_records, "ab", strict=True):
        inner_summary = record["states"]["inner"]["loop"]
        inner_records = [
            r for r in _side_file(storage, workflow_id, inner_summary) if r["kind"] == "iteration"
        ]
        assert [r["states"]["work"]["status"] for r in inner_records] == ["completed"] * 10
        assert [r["item"] for r in inner_records] == list(range(1, 11))
        assert record["states"]["after"]["status"] == "completed", name


def test_sigkill_in_a_parallel_loop_resumes_only_the_unfinished_iteration(tmp_path: Path) -> None:
    def others_done(storage: Path, work: Path, workflow_id: str) -> bool:
        # Iteration 7 blocks; the others (3 at a time) finish and are counted.
        loop = _doc(storage, workflow_id)["states"].get("each", {}).get("loop") or {}
        return loop.get("done") == 9 and list(loop.get("running") or {}) == ["6"]

    crashed, final, counts, storage, workflow_id = _crash_and_resume(
        tmp_path, "loop_crash_parallel", others_done
    )
    assert crashed["states"]["each"]["loop"]["concurrency"] == 3
    # The iteration in flight keeps its body result under its own key.
    assert crashed["states"]["each.6.work"]["status"] == "running"
    assert final["status"] == "completed", final["error"]
    assert 1 <= counts.pop("7") <= 2
    assert counts == Counter({str(i): 1 for i in range(1, 11) if i != 7})
    assert not any("." in name for name in final["states"])  # scoped results moved out
    summary = final["states"]["each"]["loop"]
    iterations = [r for r in _side_file(storage, workflow_id, summary) if r["kind"] == "iteration"]
    assert sorted(r["index"] for r in iterations) == list(range(10))
    assert iterations[-1]["index"] == 6  # the resumed one finished last


def test_sigkill_while_iteration_7_runs_in_a_parallel_loop_with_others_in_flight(
    tmp_path: Path,
) -> None:
    """Killed as soon as item 7 started (others may be in flight): no finished iteration
    runs again, and none runs more than twice."""

    def seventh_running(storage: Path, work: Path, workflow_id: str) -> bool:
        return "7" in _log(work)

    crashed, final, counts, storage, workflow_id = _crash_and_resume(
        tmp_path, "loop_crash_parallel", seventh_running
    )
    assert final["status"] == "completed", final["error"]
    done_before = {
        r["index"] + 1
        for r in _side_file(storage, workflow_id, final["states"]["each"]["loop"])[
            : crashed["states"]["each"]["loop"]["records"]
        ]
        if r["kind"] == "iteration"
    }
    assert set(counts) == {str(i) for i in range(1, 11)}
    for item in range(1, 11):
        assert 1 <= counts[str(item)] <= 2
        if item in done_before:
            assert counts[str(item)] == 1
