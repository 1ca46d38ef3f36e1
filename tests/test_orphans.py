"""Orphaned steps: a SIGKILLed executor's step is killed before it runs again, and on
cancel (real processes throughout; Linux, for /proc and the parent-death signal); and
what becomes of a timed-out call step's thread."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import manage, pid_alive, spawn, wait_for
from wfstate import runs
from wfstate.engine import processes
from wfstate.engine.processes import TOKEN_VARIABLE, kill_orphan, new_token, step_record
from wfstate.engine.steps import StepContext, run_call

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc"),
]


def _doc(storage: Path, workflow_id: str) -> dict[str, Any]:
    return orjson.loads((storage / "states" / f"{workflow_id}.json").read_bytes())


def _kill_group_of(pid_file: Path) -> None:
    """Test hygiene: never leave a ticker behind, whatever the outcome."""
    with contextlib.suppress(OSError, ValueError):
        os.killpg(os.getpgid(int(pid_file.read_text())), signal.SIGKILL)


@pytest.fixture
def orphaned(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """An ``orphan`` run whose executor was SIGKILLed while its ticker runs."""
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    proc = spawn(storage, "run_workflow", "orphan", "--input", f"dir={work}")
    try:
        wait_for(lambda: (work / "first.pid").exists() and (work / "log").exists(), 60, "ticks")
        files = list((storage / "states").glob("*.json"))
        assert len(files) == 1
        workflow_id = files[0].stem

        def recorded() -> Any:
            return _doc(storage, workflow_id)["states"]["tick"].get("process")

        record = recorded()  # written with the step's start, before the shell is started
        assert record["host"] == socket.gethostname() and record["token"]
        environ = Path(f"/proc/{int((work / 'first.pid').read_text())}/environ").read_bytes()
        assert f"{TOKEN_VARIABLE}={record['token']}".encode() in environ.split(b"\0")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    ticker = int((work / "first.pid").read_text())
    assert pid_alive(ticker), "the ticker should outlive its executor (that is the defect)"
    try:
        yield storage, work, workflow_id
    finally:
        _kill_group_of(work / "first.pid")
        _kill_group_of(work / "again.pid")


def _ticks(work: Path) -> dict[str, list[int]]:
    ticks: dict[str, list[int]] = {"first": [], "again": []}
    for line in (work / "log").read_text().splitlines():
        who, ns = line.split()
        ticks.setdefault(who, []).append(int(ns))
    return ticks


def _assert_no_overlap(work: Path) -> None:
    ticks = _ticks(work)
    assert ticks["first"] and len(ticks["again"]) == 3, ticks
    overlap = [t for t in ticks["first"] if t >= min(ticks["again"])]
    assert not overlap, f"the orphan ticked {len(overlap)} times after the re-run started"
    assert not pid_alive(int((work / "first.pid").read_text()))


def _assert_orphan_event(doc: dict[str, Any], work: Path) -> None:
    events = [e for e in doc["history"] if e.get("event") == "orphan"]
    assert len(events) == 1, doc["history"]
    assert events[0]["state"] == "tick" and events[0]["outcome"] == "killed"
    assert int((work / "first.pid").read_text()) in events[0]["pids"]


def test_recover_kills_the_orphan_before_the_rerun_starts(
    orphaned: tuple[Path, Path, str],
) -> None:
    storage, work, workflow_id = orphaned
    result = manage(storage, "recover_workflows", "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["recovered"] == {workflow_id: "completed"}
    _assert_no_overlap(work)
    doc = _doc(storage, workflow_id)
    assert doc["states"]["tick"]["status"] == "completed"
    assert doc["states"]["tick"]["process"] is None  # cleared when the step ended
    _assert_orphan_event(doc, work)
    # The interrupted step went to history as it was, its process record with it.
    assert doc["history"][-1]["event"] == "recover"
    assert doc["history"][-1]["rewound"][0]["process"] is None  # dealt with: cleared


def test_resume_kills_the_orphan_before_the_rerun_starts(
    orphaned: tuple[Path, Path, str],
) -> None:
    storage, work, workflow_id = orphaned
    result = manage(storage, "resume_workflow", workflow_id, "--json")
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["status"] == "completed"
    _assert_no_overlap(work)
    _assert_orphan_event(_doc(storage, workflow_id), work)


def test_detached_recover_kills_the_orphan_when_rewinding(
    orphaned: tuple[Path, Path, str], settings: Any
) -> None:
    storage, work, workflow_id = orphaned
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": storage, "INDEX_ON_WRITE": False}
    settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
    assert runs.recover_runs(detach=True) == [workflow_id]
    _assert_no_overlap(work)
    doc = _doc(storage, workflow_id)
    assert doc["status"] == "completed"
    _assert_orphan_event(doc, work)


def test_cancel_kills_the_orphan_within_2s(orphaned: tuple[Path, Path, str], settings: Any) -> None:
    storage, work, workflow_id = orphaned
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": storage, "INDEX_ON_WRITE": False}
    ticker = int((work / "first.pid").read_text())
    started = time.monotonic()
    outcome, _ = runs.cancel_run(workflow_id)
    assert outcome == "cancelled"  # nobody executed it: marked at once
    wait_for(lambda: not pid_alive(ticker), max(0.0, 2.0 - (time.monotonic() - started)), "gone")
    assert time.monotonic() - started < 2.0
    doc = _doc(storage, workflow_id)
    assert doc["status"] == "cancelled" and doc["states"]["tick"]["status"] == "cancelled"
    _assert_orphan_event(doc, work)
    # Nothing ticks any more.
    count = len(_ticks(work)["first"])
    assert not pid_alive(ticker) and len(_ticks(work)["first"]) == count


def test_recover_kills_every_branchs_orphan_before_the_block_runs_again(tmp_path: Path) -> None:
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    branches = ("left", "right")
    pid_files = [work / f"{b}-{run}.pid" for b in branches for run in ("first", "again")]
    proc = spawn(storage, "run_workflow", "orphan_fanout", "--input", f"dir={work}")
    try:
        try:
            wait_for(
                lambda: (
                    all((work / f"{b}-first.pid").exists() for b in branches)
                    and (work / "log").exists()
                ),
                60,
                "both branches to tick",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
        workflow_id = next((storage / "states").glob("*.json")).stem
        result = manage(storage, "recover_workflows", "--json")
        assert result.returncode == 0, result.stderr
        assert orjson.loads(result.stdout)["recovered"] == {workflow_id: "completed"}
        ticks = _ticks(work)
        orphans = ticks["left-first"] + ticks["right-first"]
        reruns = ticks["left-again"] + ticks["right-again"]
        assert len(reruns) == 6 and orphans
        assert max(orphans) < min(reruns), "an orphan ticked after the block ran again"
        events = [e for e in _doc(storage, workflow_id)["history"] if e["event"] == "orphan"]
        assert sorted((e["state"], e["outcome"]) for e in events) == [
            ("left", "killed"),
            ("right", "killed"),
        ]
    finally:
        for pid_file in pid_files:
            _kill_group_of(pid_file)


def test_the_kernel_kills_the_steps_shell_with_its_executor(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: the shell dies with the executor, though nobody recovers the run;
    its own children do not (the token is what finds them)."""
    storage, work = tmp_path / "storage", tmp_path / "work"
    work.mkdir()
    proc = spawn(storage, "run_workflow", "sleeper", "--input", f"dir={work}")
    try:
        wait_for(lambda: (work / "child.pid").exists(), 60, "the step")
        workflow_id = next((storage / "states").glob("*.json")).stem
        record = _doc(storage, workflow_id)["states"]["nap"]["process"]
        child = int((work / "child.pid").read_text())
        shell = os.getpgid(child)  # the step's shell leads the group
        assert pid_alive(shell)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    try:
        wait_for(lambda: not pid_alive(shell), 10, "the step's shell to be killed")
        assert pid_alive(child)
        report = kill_orphan(record)
        assert (report.outcome, report.pids, report.pgids) == ("killed", [child], [shell])
        assert not pid_alive(child)
    finally:
        _kill_group_of(work / "child.pid")


# --- telling the step's processes from strangers -----------------------------------------


def _start(script: str, token: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/bin/sh", "-c", script],
        env={**os.environ, TOKEN_VARIABLE: token},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _record(token: str) -> dict[str, Any]:
    record = step_record(token)
    assert record is not None
    return record


def test_a_group_whose_leader_is_gone_is_found_by_its_token() -> None:
    token = new_token()
    proc = _start("sleep 60 >/dev/null & echo $!", token)
    child = int(proc.communicate(timeout=10)[0])  # the leader exited, its child lives on
    try:
        assert pid_alive(child) and not pid_alive(proc.pid)
        report = kill_orphan(_record(token))
        assert (report.outcome, report.pids, report.pgids) == ("killed", [child], [proc.pid])
        assert not pid_alive(child)
    finally:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)


def test_members_without_the_token_and_carriers_that_left_the_group_are_killed() -> None:
    """``env -i`` drops the token (its group still has a carrier, the shell); ``setsid``
    leaves the group (it still carries the token)."""
    token = new_token()
    proc = _start(
        "env -i sleep 60 >/dev/null & echo $!; setsid sleep 60 >/dev/null & echo $!; "
        "exec >/dev/null; wait",
        token,
    )
    assert proc.stdout is not None
    bare, escaped = int(proc.stdout.readline()), int(proc.stdout.readline())
    try:
        wait_for(lambda: os.getsid(escaped) == escaped, 10, "setsid")
        report = kill_orphan(_record(token))
        assert report.outcome == "killed"
        assert set(report.pids) == {proc.pid, bare, escaped}
        assert set(report.pgids) == {proc.pid, escaped}
        assert proc.wait(5) == -signal.SIGTERM
        assert not pid_alive(bare) and not pid_alive(escaped)
    finally:
        for pid in (bare, escaped):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
        proc.communicate()


def test_a_stranger_is_left_alone() -> None:
    """Process ids are reused: what does not carry the step's token is not the step's."""
    stranger = _start("exec sleep 60", new_token())
    try:
        report = kill_orphan(_record(new_token()))
        assert report.outcome == "gone" and pid_alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.communicate()


def test_another_hosts_or_boots_processes_are_not_touched() -> None:
    token = new_token()
    proc = _start("exec sleep 60", token)
    try:
        record = _record(token)
        elsewhere = kill_orphan({**record, "host": "web-2"})
        assert elsewhere.outcome == "elsewhere" and "web-2" in elsewhere.detail
        rebooted = kill_orphan({**record, "boot_id": "not-this-boot"})
        assert rebooted.outcome == "gone" and "rebooted" in rebooted.detail
        assert kill_orphan({"host": record["host"]}).outcome == "elsewhere"
        assert pid_alive(proc.pid)
    finally:
        proc.kill()
        proc.communicate()


_READ_PDEATHSIG = (
    "import ctypes; s = ctypes.c_int(); "
    "ctypes.CDLL(None).prctl(2, ctypes.byref(s), 0, 0, 0); print(s.value)"  # PR_GET_PDEATHSIG
)


@pytest.mark.parametrize("way", ["chosen", "prctl"])
def test_the_parent_death_signal_is_set_in_the_child(way: str) -> None:
    """The child reads its own parent-death signal back: SIGKILL, by setpriv or prctl."""
    argv: list[str] = [sys.executable, "-c", _READ_PDEATHSIG]
    preexec = None
    if way == "chosen":
        argv, preexec = processes.with_pdeathsig(argv)
    else:
        preexec = processes.pdeathsig_preexec()
        assert preexec is not None
    out = subprocess.run(argv, preexec_fn=preexec, capture_output=True, text=True, check=True)
    assert int(out.stdout) == signal.SIGKILL


# --- a timed-out call's thread -------------------------------------------------------------

_CALL_LOG: list[str] = []
_CALL_DONE = threading.Event()


def patient_call(ctx: Any) -> str:
    """Works until told to stop, then says how it ended."""
    while not ctx.cancelled:
        time.sleep(0.01)
    _CALL_LOG.append("told to stop")
    _CALL_DONE.set()
    return "a result nobody reads"


def test_a_timed_out_calls_thread_runs_on_until_it_sees_ctx_cancelled() -> None:
    _CALL_LOG.clear()
    _CALL_DONE.clear()
    ctx = StepContext(
        workflow_id="w",
        workflow_name="w",
        state_name="patient",
        inputs={},
        states={},
        attempt=1,
        should_stop=lambda: False,
    )
    result = run_call(
        "tests.test_orphans.patient_call", {}, ctx, timeout=0.2, should_stop=lambda: False
    )
    assert (result.ok, result.timed_out, result.output) == (False, True, None)
    assert result.error == "timed out after 0.2s"
    # The thread could not be killed; it learns through ctx that it was abandoned.
    assert ctx.cancelled
    wait_for(_CALL_DONE.is_set, 10, "the abandoned call to stop")
    assert _CALL_LOG == ["told to stop"]
