"""Sub-workflows (call_workflow), hooks, dry runs and the rest of awf's step keys.

The awf fixtures run unchanged; crash, recovery and cancel go through real processes
(``manage.py run_workflow`` killed with SIGKILL, ``manage.py recover_workflows``), and
counter files prove what ran how many times.
"""

from __future__ import annotations

import http.server
import itertools
import json
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.helpers import manage, pid_alive, spawn, wait_for
from wfstate import runs
from wfstate.definitions import get_registry, load_definition, loads_definition
from wfstate.exceptions import InvalidDefinition
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores import get_store

FIXTURES = Path(
    os.environ.get("WFSTATE_AWF_FIXTURES")
    or Path(__file__).resolve().parents[1].parent / "shared" / "awf-fixtures"
)
if not FIXTURES.is_dir():  # a worktree: the copy kept in the repository
    FIXTURES = Path(__file__).parent / "definition_fixtures" / "awf"


@pytest.fixture
def wfdir(settings: Any, tmp_path: Path) -> Path:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "WORKFLOW_DIRS": [workflows],
        "INDEX_ON_WRITE": False,
    }
    return workflows


def _write(directory: Path, name: str, text: str) -> None:
    (directory / f"{name}.yaml").write_text(text)


def _doc(storage: Path, workflow_id: str) -> dict[str, Any]:
    return orjson.loads((storage / "states" / f"{workflow_id}.json").read_bytes())


def _count(path: Path) -> int:
    return path.read_text().count("x") if path.exists() else 0


# --- the awf fixtures ------------------------------------------------------------------


def test_awf_subworkflow_fixtures_run_unchanged(wfdir: Path) -> None:
    for name in ("subworkflow-simple", "subworkflow-child"):
        shutil.copy(FIXTURES / f"{name}.yaml", wfdir)
    events: list[dict[str, Any]] = []
    parent = runs.start_run(
        "subworkflow-simple", {"input_message": "hello"}, progress=events.append
    )
    assert parent.status == RunStatus.COMPLETED, parent.error
    assert parent.parent_run_id is None
    call = parent.states["call_child"]
    # The child's output, under the name the parent's outputs mapping gives it.
    assert call.output == {"child_result": "Child processed: hello (count=3)\n"}
    assert call.child_run_id
    child = get_store().load(call.child_run_id)
    assert child.status == RunStatus.COMPLETED
    assert child.parent_run_id == parent.workflow_id
    assert child.started_by is not None
    assert child.started_by["kind"] == "parent"
    assert child.started_by["workflow_id"] == parent.workflow_id
    assert child.started_by["state"] == "call_child"
    assert child.inputs == {"message": "hello", "count": 3}
    assert child.outputs == {"result": "Child processed: hello (count=3)\n"}
    assert parent.states["aggregate"].output == "Sub-workflow completed successfully\n"
    started = [e["state"] for e in events if e["event"] == "step_started"]
    assert started == ["prepare", "call_child", "call_child/process", "aggregate"]
    assert sorted(get_store().list()) == sorted([parent.workflow_id, child.workflow_id])


def test_awf_hooks_fixture_prints_the_hook_lines_in_order(wfdir: Path) -> None:
    shutil.copy(FIXTURES / "valid-with-hooks.yaml", wfdir)
    out = StringIO()
    call_command("run_workflow", "workflow-with-hooks", "--verbosity", "2", stdout=out)
    lines = [line for line in out.getvalue().splitlines() if "⚓" in line]
    assert lines == [
        "  ⚓ workflow_start: WORKFLOW_START",
        "  ⚓ step1 pre: PRE_STEP1",
        "  ⚓ step1 post: POST_STEP1",
        "  ⚓ workflow_end: WORKFLOW_END",
    ]
    state = get_store().load(get_store().list()[0])
    assert state.status == RunStatus.COMPLETED
    assert [r["output"] for r in state.hooks["workflow_start"]] == ["WORKFLOW_START\n"]
    assert [r["output"] for r in state.hooks["workflow_end"]] == ["WORKFLOW_END\n"]
    assert "workflow_error" not in state.hooks and "workflow_cancel" not in state.hooks
    hooks = state.states["step1"].hooks
    assert hooks is not None
    assert [r["output"] for r in hooks["pre"]] == ["PRE_STEP1\n"]
    assert [r["output"] for r in hooks["post"]] == ["POST_STEP1\n"]


def test_awf_valid_full_runs_with_log_hooks(wfdir: Path, tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "valid-full.yaml", wfdir)
    target = tmp_path / "input.txt"
    target.write_text("content\n")
    state = runs.start_run("full-workflow", {"file_path": str(target)})
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.hooks["workflow_start"][0]["output"] == "Starting workflow: full-workflow"
    assert state.hooks["workflow_end"][0]["output"].startswith("Completed in ")
    validate_hooks = state.states["validate"].hooks or {}
    assert [r["output"] for r in validate_hooks["pre"]] == [f"Validating: {target}"]
    assert state.states["extract"].output == "content\n"
    # Its 'error' terminal has no status: awf's default is success, so workflow_end.
    missing = runs.start_run("full-workflow", {"file_path": str(tmp_path / "missing")})
    assert missing.current_state == "error" and missing.status == RunStatus.COMPLETED
    assert "workflow_error" not in missing.hooks and "workflow_end" in missing.hooks


def test_workflow_error_hook_sees_the_error(wfdir: Path) -> None:
    _write(
        wfdir,
        "erring",
        """\
name: erring
hooks:
  workflow_error: [{log: "Error: {{error.Message}} at {{ error.state }}"}]
states:
  initial: s
  s: {type: step, command: "exit 5", on_success: done}
  done: {type: terminal}
""",
    )
    failed = runs.start_run("erring")
    assert failed.status == RunStatus.FAILED
    assert failed.hooks["workflow_error"][0]["output"] == (
        "Error: state 's' failed (exit code 5) and has no failure route at s"
    )


# --- sub-workflows: load-time and run-time checks --------------------------------------

CHAIN = """\
name: {name}
states:
  initial: go
  go: {{type: call_workflow, workflow: {child}, on_success: done}}
  done: {{type: terminal}}
"""
LEAF = """\
name: {name}
states:
  initial: go
  go: {{type: step, command: echo leaf, on_success: done}}
  done: {{type: terminal}}
"""


def _chain(directory: Path, length: int) -> None:
    names = [f"d{i:02d}" for i in range(1, length + 1)]
    for name, child in itertools.pairwise(names):
        _write(directory, name, CHAIN.format(name=name, child=child))
    _write(directory, names[-1], LEAF.format(name=names[-1]))


def test_depth_ten_runs_and_depth_eleven_is_refused_at_load(wfdir: Path) -> None:
    _chain(wfdir, 11)  # d01 -> ... -> d11: 11 runs deep
    with pytest.raises(InvalidDefinition) as info:
        runs.start_run("d01")
    assert "nest deeper than 10" in str(info.value)
    assert info.value.errors[0]["state"] == "go"
    assert get_store().list() == []  # refused before anything was written
    state = runs.start_run("d02")  # d02 -> ... -> d11: 10 deep
    assert state.status == RunStatus.COMPLETED, state.error
    assert len(get_store().list()) == 10
    deepest = [get_store().load(i) for i in get_store().list()]
    assert max((s.started_by or {}).get("depth", 1) for s in deepest) == 10


def test_circular_calls_are_refused_at_load(wfdir: Path) -> None:
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(CHAIN.format(name="selfish", child="selfish"))
    assert "calls itself" in str(info.value)
    _write(wfdir, "ping", CHAIN.format(name="ping", child="pong"))
    _write(wfdir, "pong", CHAIN.format(name="pong", child="ping"))
    with pytest.raises(InvalidDefinition) as cycle:
        runs.start_run("ping")
    assert "circular sub-workflow call: ping -> pong -> ping" in str(cycle.value)


def test_depth_and_cycles_are_refused_at_run_time_too(wfdir: Path) -> None:
    """When the files do not show it (a run's chain comes from its parents), the step fails."""
    _write(wfdir, "caller", CHAIN.format(name="caller", child="leaf"))
    _write(wfdir, "leaf", LEAF.format(name="leaf"))
    store = get_store()
    for chain, expected in (
        ([f"w{i}" for i in range(9)] + ["caller"], "nest deeper than 10"),
        (["leaf", "caller"], "circular sub-workflow call: leaf -> caller -> leaf"),
    ):
        state = WorkflowState.new(
            "caller", started_by={"kind": "parent", "workflow_id": None, "chain": chain}
        )
        store.save(state)
        done = runs.execute(state.workflow_id)
        assert done.status == RunStatus.FAILED
        assert expected in (done.states["go"].error or "")
        assert done.states["go"].child_run_id is None
    assert len(store.list()) == 2  # no child was created


def test_child_inputs_are_validated_and_failure_routes(wfdir: Path) -> None:
    _write(
        wfdir,
        "needs",
        """\
name: needs
inputs: [{name: n, type: integer, required: true}]
outputs: [{name: twice, from: "inputs.n * 2"}]
states:
  initial: s
  s: {type: step, command: "exit {{ inputs.n }}", on_success: done, on_failure: bad}
  done: {type: terminal}
  bad: {type: terminal, status: failure, message: "child failed with {{ inputs.n }}"}
""",
    )
    _write(
        wfdir,
        "calls",
        """\
name: calls
inputs: [{name: n, required: true}]
states:
  initial: c
  c:
    type: call_workflow
    workflow: needs
    inputs: {n: "{{ inputs.n }}"}
    on_success: ok
    on_failure: ko
  ok: {type: terminal, message: "twice is {{ states.c.output.twice }}"}
  ko: {type: terminal, status: failure, message: "{{ states.c.error }}"}
""",
    )
    ok = runs.start_run("calls", {"n": "0"})
    assert ok.status == RunStatus.COMPLETED, ok.error
    assert ok.states["ok"].output == "twice is 0"
    ko = runs.start_run("calls", {"n": "3"})
    assert ko.status == RunStatus.FAILED
    child_id = ko.states["c"].child_run_id
    assert ko.error == f"sub-workflow 'needs' (run {child_id}) failed: child failed with 3"
    bad = runs.start_run("calls", {"n": "many"})
    assert bad.status == RunStatus.FAILED
    assert "sub-workflow 'needs'" in (bad.states["c"].error or "")
    assert "integer" in (bad.states["c"].error or "")
    assert bad.states["c"].child_run_id is None


# --- sub-workflows across real processes -----------------------------------------------

PARENT = """\
name: cparent
inputs: [{name: dir, required: true}]
hooks:
  workflow_start: [{command: "echo x >> {{ inputs.dir }}/wstart.count"}]
  workflow_end: [{command: "echo x >> {{ inputs.dir }}/wend.count"}]
  workflow_cancel: [{command: "echo x >> {{ inputs.dir }}/wcancel.count"}]
states:
  initial: before
  before:
    type: step
    command: "echo x >> {{ inputs.dir }}/before.count"
    hooks:
      pre: [{command: "echo x >> {{ inputs.dir }}/pre.count"}]
      post: [{command: "echo x >> {{ inputs.dir }}/post.count"}]
    on_success: call
  call:
    type: call_workflow
    workflow: cchild
    inputs: {dir: "{{ inputs.dir }}"}
    outputs: {answer: got}
    on_success: after
  after:
    type: step
    command: "echo x >> {{ inputs.dir }}/after.count; echo {{ states.call.output.got }}"
    on_success: done
  done: {type: terminal}
"""
CHILD = """\
name: cchild
inputs: [{name: dir, required: true}]
hooks:
  workflow_start: [{command: "echo x >> {{ inputs.dir }}/cstart.count"}]
  workflow_end: [{log: "child done"}, {command: "echo x >> {{ inputs.dir }}/cend.count"}]
outputs: [{name: answer, from: "states.two.output | trim"}]
states:
  initial: one
  one: {type: step, command: "echo x >> {{ inputs.dir }}/one.count", on_success: two}
  two:
    type: step
    command: >-
      echo x >> {{ inputs.dir }}/two.count;
      sh -c 'echo $$ > "$0"/child.pid; exec sleep 60' {{ inputs.dir }} >/dev/null 2>&1 &
      touch {{ inputs.dir }}/two.started;
      while [ ! -e {{ inputs.dir }}/release ]; do sleep 0.05; done; echo 42
    hooks:
      pre: [{command: "echo x >> {{ inputs.dir }}/twopre.count"}]
    on_success: done
  done: {type: terminal}
"""


@pytest.fixture
def proc_dirs(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    storage, work, workflows = tmp_path / "storage", tmp_path / "work", tmp_path / "wf"
    work.mkdir()
    workflows.mkdir()
    _write(workflows, "cparent", PARENT)
    _write(workflows, "cchild", CHILD)
    return storage, work, {"WFSTATE_TEST_WORKFLOW_DIR": str(workflows)}


def _runs_by_name(storage: Path) -> dict[str, dict[str, Any]]:
    docs = [orjson.loads(p.read_bytes()) for p in (storage / "states").glob("*.json")]
    return {d["workflow_name"]: d for d in docs}


@pytest.mark.slow
def test_sigkill_during_the_child_then_recover_finishes_both_once(
    proc_dirs: tuple[Path, Path, dict[str, str]],
) -> None:
    storage, work, env = proc_dirs
    proc = spawn(storage, "run_workflow", "cparent", "--input", f"dir={work}", **env)
    wait_for(lambda: (work / "two.started").exists(), 60, "the child's step 'two'")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    crashed = _runs_by_name(storage)
    assert set(crashed) == {"cparent", "cchild"}
    parent, child = crashed["cparent"], crashed["cchild"]
    assert parent["status"] == "running" and child["status"] == "running"
    assert parent["states"]["call"]["child_run_id"] == child["workflow_id"]
    assert child["parent_run_id"] == parent["workflow_id"]
    assert parent["parent_run_id"] is None

    (work / "release").touch()
    result = manage(storage, "recover_workflows", "--json", **env)
    assert result.returncode == 0, result.stderr
    recovered = orjson.loads(result.stdout)["recovered"]
    assert recovered == {parent["workflow_id"]: "completed"}  # the child through its parent

    final = _runs_by_name(storage)
    assert len(list((storage / "states").glob("*.json"))) == 2  # no second child
    assert final["cparent"]["status"] == "completed"
    assert final["cchild"]["status"] == "completed"
    assert final["cchild"]["workflow_id"] == child["workflow_id"]
    assert final["cchild"]["outputs"] == {"answer": "42"}
    assert final["cparent"]["states"]["call"]["output"] == {"got": "42"}
    assert final["cparent"]["states"]["after"]["output"] == "42\n"
    counts = {p.name.split(".")[0]: _count(p) for p in work.glob("*.count")}
    # The killed step ran again; no completed step of either run did; every hook ran once.
    assert counts == {
        "wstart": 1,
        "pre": 1,
        "before": 1,
        "post": 1,
        "cstart": 1,
        "one": 1,
        "twopre": 1,
        "two": 2,
        "cend": 1,
        "after": 1,
        "wend": 1,
    }
    assert [r["output"] for r in final["cchild"]["hooks"]["workflow_end"]] == ["child done", ""]


@pytest.mark.slow
def test_cancelling_the_parent_cancels_the_child_within_2s(
    proc_dirs: tuple[Path, Path, dict[str, str]], settings: Any
) -> None:
    storage, work, env = proc_dirs
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": storage, "INDEX_ON_WRITE": False}
    proc = spawn(storage, "run_workflow", "cparent", "--input", f"dir={work}", **env)
    wait_for(lambda: (work / "child.pid").exists(), 60, "the child's step 'two'")
    ids = {name: doc["workflow_id"] for name, doc in _runs_by_name(storage).items()}
    outcome, _ = runs.cancel_run(ids["cparent"])
    assert outcome == "requested"
    wait_for(
        lambda: (
            _doc(storage, ids["cchild"])["status"] == "cancelled"
            and _doc(storage, ids["cparent"])["status"] == "cancelled"
        ),
        2.0,
        "both runs cancelled",
    )
    sleeper = int((work / "child.pid").read_text())
    wait_for(lambda: not pid_alive(sleeper), 2.0, "the child step's process to die")
    assert _doc(storage, ids["cchild"])["states"]["two"]["status"] == "cancelled"
    assert _doc(storage, ids["cparent"])["states"]["call"]["status"] == "cancelled"
    assert _count(work / "wcancel.count") == 1
    proc.communicate(timeout=10)
    assert proc.returncode == 3


def test_cancelling_a_crashed_parent_marks_its_child_cancelled(wfdir: Path) -> None:
    _write(wfdir, "caller", CHAIN.format(name="caller", child="leaf"))
    _write(wfdir, "leaf", LEAF.format(name="leaf"))
    store = get_store()
    parent = WorkflowState.new("caller")
    child = WorkflowState.new("leaf", parent_run_id=parent.workflow_id)
    child.status = RunStatus.RUNNING
    parent.status = RunStatus.RUNNING
    from wfstate.state import StepResult

    parent.states["go"] = StepResult(name="go", child_run_id=child.workflow_id)
    store.save(child)
    store.save(parent)
    outcome, state = runs.cancel_run(parent.workflow_id)
    assert outcome == "cancelled" and state.status == RunStatus.CANCELLED
    assert store.load(child.workflow_id).status == RunStatus.CANCELLED


def test_resuming_a_parent_whose_child_failed_resumes_that_child(
    wfdir: Path, tmp_path: Path
) -> None:
    flag = tmp_path / "ok"
    _write(
        wfdir,
        "flaky-child",
        f"""\
name: flaky-child
states:
  initial: a
  a: {{type: step, command: "echo x >> {tmp_path}/a.count", on_success: b}}
  b: {{type: step, command: "test -e {flag}", on_success: done}}
  done: {{type: terminal}}
""",
    )
    _write(wfdir, "outer", CHAIN.format(name="outer", child="flaky-child"))
    first = runs.start_run("outer")
    assert first.status == RunStatus.FAILED
    child_id = first.states["go"].child_run_id
    flag.touch()
    again = runs.resume_run(first.workflow_id)
    assert again.status == RunStatus.COMPLETED, again.error
    assert again.states["go"].child_run_id == child_id  # the same child, resumed
    assert _count(tmp_path / "a.count") == 1  # its completed step did not run again
    assert len(get_store().list()) == 2
    # A completed child is never re-run; an explicit --from re-runs the step: a new child.
    rerun = runs.resume_run(first.workflow_id, from_state="go")
    assert rerun.status == RunStatus.COMPLETED
    assert rerun.states["go"].child_run_id != child_id
    assert get_store().load(child_id).status == RunStatus.COMPLETED
    assert _count(tmp_path / "a.count") == 2


# --- hooks --------------------------------------------------------------------------------


def test_a_failing_workflow_start_hook_aborts_the_run(wfdir: Path, tmp_path: Path) -> None:
    _write(
        wfdir,
        "abort",
        f"""\
name: abort
hooks:
  workflow_start: [{{command: "echo starting; exit 4"}}, {{command: "touch {tmp_path}/no"}}]
  workflow_error: [{{command: "touch {tmp_path}/error-hook"}}]
states:
  initial: s
  s: {{type: step, command: "touch {tmp_path}/step", on_success: done}}
  done: {{type: terminal}}
""",
    )
    state = runs.start_run("abort")
    assert state.status == RunStatus.FAILED
    assert state.error is not None and state.error.startswith("workflow_start hook #1 (command)")
    assert "exit code 4" in state.error
    assert not (tmp_path / "step").exists() and not (tmp_path / "no").exists()
    assert not (tmp_path / "error-hook").exists()  # as awf: no workflow_error after it
    assert state.states == {}


def test_other_hook_failures_are_warnings(wfdir: Path) -> None:
    _write(
        wfdir,
        "warns",
        """\
name: warns
hooks:
  workflow_end: [{command: "exit 2"}, {log: "still logged"}]
states:
  initial: s
  s:
    type: step
    command: echo main
    hooks:
      pre: [{log: "{{ inputs.nope }}"}]
      post: [{call: tests.test_calls.hook_call, with: {v: "{{ states.s.output | trim }}"}}]
    on_success: done
  done: {type: terminal}
""",
    )
    state = runs.start_run("warns")
    assert state.status == RunStatus.COMPLETED, state.error
    assert len(state.warnings) == 2
    assert state.warnings[0].startswith("pre hook of state 's' #1 (log) failed: ")
    assert "undefined name 'inputs.nope'" in state.warnings[0]
    assert state.warnings[1].startswith("workflow_end hook #1 (command) failed: exit code 2")
    assert state.hooks["workflow_end"][1]["output"] == "still logged"
    assert state.states["s"].hooks["post"][0]["output"] == {
        "seen": "main",
        "run": state.workflow_id,
    }  # type: ignore[index]


def hook_call(ctx: Any, v: str) -> dict[str, str]:
    return {"seen": v, "run": ctx.workflow_id}


# --- dry run ---------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_runs_nothing(wfdir: Path, tmp_path: Path) -> None:
    for name in ("subworkflow-simple", "subworkflow-child"):
        shutil.copy(FIXTURES / f"{name}.yaml", wfdir)
    marker = tmp_path / "marker"
    _write(
        wfdir,
        "marked",
        f"""\
name: marked
inputs: [{{name: who, required: true}}]
hooks:
  workflow_start: [{{command: "touch {marker}"}}]
states:
  initial: s
  s:
    type: step
    command: "touch {marker}; echo {{{{ inputs.who }}}}"
    on_success: c
  c:
    type: call_workflow
    workflow: subworkflow-child
    inputs: {{message: "{{{{ states.s.output }}}}"}}
    on_success: done
  done: {{type: terminal}}
""",
    )
    storage = tmp_path / "storage"
    out = StringIO()
    call_command(
        "run_workflow", "marked", "--input", "who=it's me", "--dry-run", "--json", stdout=out
    )
    plan = json.loads(out.getvalue())
    assert plan["dry_run"] is True
    assert plan["inputs"] == {"who": "it's me"}
    assert [s["name"] for s in plan["states"]] == ["s", "c", "done"]
    assert plan["states"][0]["command"] == f"touch {marker}; echo 'it'\"'\"'s me'"
    assert plan["hooks"]["workflow_start"] == [{"kind": "command", "action": f"touch {marker}"}]
    child = plan["states"][1]["sub_workflow"]
    assert child["workflow"] == "subworkflow-child"
    assert child["inputs"]["message"].startswith("(rendered when the run gets there")
    human = StringIO()
    call_command(
        "run_workflow",
        "subworkflow-simple",
        "--input",
        "input_message=hi",
        "--dry-run",
        stdout=human,
    )
    assert "calls subworkflow-child" in human.getvalue()
    assert 'echo "Child processed: hi (count=3)"' in human.getvalue()
    assert not marker.exists()
    assert not storage.exists() or not any(storage.rglob("*.json"))
    with pytest.raises(CommandError) as bad:
        call_command("run_workflow", "marked", "--dry-run", stdout=StringIO())
    assert "who" in str(bad.value)
    assert not storage.exists() or not any(storage.rglob("*"))


@pytest.mark.slow
def test_dry_run_command_in_a_real_process(tmp_path: Path) -> None:
    storage, workflows = tmp_path / "storage", tmp_path / "wf"
    workflows.mkdir()
    marker = tmp_path / "marker"
    _write(
        workflows,
        "marked2",
        f"""\
name: marked2
states:
  initial: s
  s: {{type: step, command: "touch {marker}", on_success: done}}
  done: {{type: terminal}}
""",
    )
    result = manage(
        storage, "run_workflow", "marked2", "--dry-run", WFSTATE_TEST_WORKFLOW_DIR=str(workflows)
    )
    assert result.returncode == 0, result.stderr
    assert f"1. s [step] touch {marker}" in result.stdout
    assert not marker.exists()
    assert not storage.exists() or not any(storage.rglob("*.json"))


# --- the rest of awf's step keys ---------------------------------------------------------


def test_inline_on_failure_records_the_exit_code(wfdir: Path) -> None:
    _write(
        wfdir,
        "inline",
        """\
name: inline
states:
  initial: s
  s:
    type: step
    command: "exit 3"
    on_success: done
    on_failure: {message: "s broke with {{ states.s.exit_code }}", status: 7}
  done: {type: terminal}
""",
    )
    state = runs.start_run("inline")
    assert state.status == RunStatus.FAILED
    assert state.error == "s broke with 3"
    assert state.exit_code == 7
    with pytest.raises(CommandError) as info:
        call_command("run_workflow", "inline", stdout=StringIO())
    assert "s broke with 3" in str(info.value)


def test_exit_code_routing_dir_script_file_continue_on_error(wfdir: Path, tmp_path: Path) -> None:
    (wfdir / "scripts").mkdir()
    (wfdir / "scripts" / "where.sh").write_text('pwd; echo "{{ inputs.word }}"\n')
    _write(
        wfdir,
        "keys",
        f"""\
name: keys
inputs: [{{name: word, default: "a b"}}]
states:
  initial: code
  code:
    type: step
    command: "exit 2"
    transitions:
      - when: "states.code.ExitCode == 2"
        goto: two
      - goto: other
  two:
    type: step
    script_file: scripts/where.sh
    dir: "{tmp_path}"
    on_success: soft
  soft:
    type: step
    command: "exit 1"
    continue_on_error: true
    on_success: done
    on_failure: other
  other: {{type: terminal, status: failure}}
  done: {{type: terminal}}
""",
    )
    state = runs.start_run("keys")
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.states["code"].exit_code == 2
    assert state.states["two"].output == f"{tmp_path}\na b\n"
    assert state.states["soft"].status == StepStatus.FAILED


def test_use_template_with_parameters(wfdir: Path) -> None:
    (wfdir / "templates").mkdir()
    (wfdir / "templates" / "greet.yaml").write_text(
        """\
parameters:
  - {name: greeting, required: true}
  - {name: punct, default: "!"}
state:
  type: step
  command: 'echo "{{parameters.greeting}}, {{ inputs.who }}{{parameters.punct}}"'
  timeout: 5s
"""
    )
    _write(
        wfdir,
        "templated",
        """\
name: templated
inputs: [{name: who, default: world}]
states:
  initial: hi
  hi: {use_template: greet, parameters: {greeting: Hello}, on_success: done}
  done: {type: terminal}
""",
    )
    definition = load_definition(wfdir / "templated.yaml")
    assert definition.states["hi"].timeout == 5.0
    state = runs.start_run("templated")
    assert state.states["hi"].output == "Hello, world!\n"
    _write(
        wfdir,
        "untemplated",
        """\
name: untemplated
states:
  initial: hi
  hi: {use_template: greet, parameters: {nope: 1}, on_success: done}
  done: {type: terminal}
""",
    )
    with pytest.raises(InvalidDefinition) as info:
        load_definition(wfdir / "untemplated.yaml")
    messages = [e["message"] for e in info.value.errors]
    assert "template 'greet' needs parameter 'greeting'" in messages
    assert "template 'greet' has no parameter 'nope'" in messages


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            status = 201 if b"ok" in body else 500
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"echo": json.loads(body)}).encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_operations_http_request_and_notify_log(
    wfdir: Path, http_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    _write(
        wfdir,
        "ops",
        f"""\
name: ops
inputs: [{{name: word, default: ok}}]
states:
  initial: post
  post:
    type: operation
    operation: http.request
    inputs: {{url: "{http_server}", method: POST, json: {{word: "{{{{ inputs.word }}}}"}}}}
    on_success: say
    on_failure: failed
  say:
    type: operation
    operation: notify.log
    inputs: {{message: "got {{{{ states.post.output.json.echo.word }}}}"}}
    on_success: done
  done: {{type: terminal}}
  failed: {{type: terminal, status: failure, message: "{{{{ states.post.error }}}}"}}
""",
    )
    with caplog.at_level("INFO", logger="wfstate.notify"):
        state = runs.start_run("ops")
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.states["post"].output["status"] == 201
    assert state.states["post"].output["json"] == {"echo": {"word": "ok"}}
    assert state.states["say"].output == {"message": "got ok", "level": "info"}
    assert any("got ok" in r.getMessage() for r in caplog.records)
    failed = runs.start_run("ops", {"word": "no"})
    assert failed.status == RunStatus.FAILED
    assert failed.error == f"RuntimeError: POST {http_server} answered 500"


def test_unknown_operation_and_agent_steps_are_load_errors() -> None:
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(
            """\
name: w
states:
  initial: a
  a: {type: operation, operation: nope.never, on_success: b}
  b: {type: agent, provider: claude, prompt: hi, on_success: done}
  done: {type: terminal}
"""
        )
    messages = {e["state"]: e["message"] for e in info.value.errors}
    assert messages["a"].startswith("unknown operation 'nope.never' (registered: ")
    assert "http.request" in messages["a"] and "notify.log" in messages["a"]
    assert (
        messages["b"]
        == "state type 'agent' is not supported: awf 'agent' steps (AI providers) are not supported"
    )


def test_registry_lists_the_call_graph_node(wfdir: Path) -> None:
    _write(wfdir, "caller", CHAIN.format(name="caller", child="leaf"))
    _write(wfdir, "leaf", LEAF.format(name="leaf"))
    graph = get_registry().get("caller").graph()
    node = next(n for n in graph["nodes"] if n["id"] == "go")
    assert node["type"] == "call_workflow" and node["workflow"] == "leaf"


# --- faces: the admin, the API ------------------------------------------------------------


@pytest.mark.django_db
def test_admin_and_api_link_parent_and_child_and_show_hooks(
    wfdir: Path, settings: Any, admin_client: Any
) -> None:
    from django.urls import reverse

    from wfstate import index

    for name in ("subworkflow-simple", "subworkflow-child", "valid-with-hooks"):
        shutil.copy(FIXTURES / f"{name}.yaml", wfdir)
    parent = runs.start_run("subworkflow-simple", {"input_message": "linked"})
    child_id = parent.states["call_child"].child_run_id
    assert child_id
    hooked = runs.start_run("workflow-with-hooks")
    for workflow_id in get_store().list():
        index.index_state(get_store().load(workflow_id))

    def admin_url(workflow_id: str) -> str:
        return reverse("admin:wfstate_workflowrun_change", args=[workflow_id])

    html = admin_client.get(admin_url(parent.workflow_id)).content.decode()
    assert 'id="wf-child-runs"' in html and f'href="{admin_url(child_id)}"' in html
    assert "calls subworkflow-child" in html  # the graph draws the call
    assert 'class="wf-call-frame"' in html
    html = admin_client.get(admin_url(child_id)).content.decode()
    assert 'id="wf-parent-run"' in html and f'href="{admin_url(parent.workflow_id)}"' in html

    api = "/api/wfstate/runs/"
    detail = admin_client.get(f"{api}{parent.workflow_id}/").json()
    assert detail["parent_run_id"] is None and detail["parent_url"] is None
    assert detail["states"]["call_child"]["child_run_id"] == child_id
    assert detail["states"]["call_child"]["child_url"].endswith(f"{api}{child_id}/")
    child = admin_client.get(f"{api}{child_id}/").json()
    assert child["parent_run_id"] == parent.workflow_id
    assert child["parent_url"].endswith(f"{api}{parent.workflow_id}/")
    assert child["started_by"]["kind"] == "parent"
    assert child["outputs"] == {"result": "Child processed: linked (count=3)\n"}

    html = admin_client.get(admin_url(hooked.workflow_id)).content.decode()
    assert 'id="wf-hooks"' in html and "WORKFLOW_START" in html and "PRE_STEP1" in html
    data = admin_client.get(f"{api}{hooked.workflow_id}/").json()
    assert data["hooks"]["workflow_end"][0]["output"] == "WORKFLOW_END\n"
    assert data["states"]["step1"]["hooks"]["post"][0]["output"] == "POST_STEP1\n"

    graph = admin_client.get("/api/wfstate/workflows/subworkflow-simple/").json()["graph"]
    node = next(n for n in graph["nodes"] if n["id"] == "call_child")
    assert node == {
        "id": "call_child",
        "type": "call_workflow",
        "terminal_status": None,
        "workflow": "subworkflow-child",
        "hooks": [],
    }

    before = sorted(get_store().list())
    response = admin_client.post(
        f"{api}?dry_run=1",
        {"workflow_name": "subworkflow-simple", "inputs": {"input_message": "dry"}},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["states"][1]["sub_workflow"]["inputs"] == {"message": "dry", "count": 3}
    assert sorted(get_store().list()) == before
    bad = admin_client.post(
        f"{api}?dry_run=1",
        {"workflow_name": "subworkflow-simple", "inputs": {}},
        content_type="application/json",
    )
    assert bad.status_code == 400


def test_docs_and_schema_cover_every_new_key() -> None:
    """docs/workflows.md names each key with an example, and the JSON Schema has it."""
    from wfstate.definitions import awf
    from wfstate.definitions.loader import workflow_schema

    doc = (Path(__file__).resolve().parents[1] / "docs" / "workflows.md").read_text()
    schema = workflow_schema()
    defs = schema["$defs"]
    keys = {
        "call_workflow": awf.STATE_KEYS["call_workflow"] - awf.COMMON_STATE_KEYS,
        "operation": awf.STATE_KEYS["operation"] - awf.COMMON_STATE_KEYS,
        "step": {"script_file", "hooks", "use_template", "parameters", "operation", "dir"},
        "hook_action": awf.HOOK_ACTION_KEYS,
        "workflow_hooks": set(awf.WORKFLOW_HOOK_EVENTS),
        "step_hooks": set(awf.STEP_HOOK_EVENTS),
    }
    for definition, names in keys.items():
        properties = set(defs[definition].get("properties", {}))
        properties |= set(defs["routing"]["properties"]) if "$ref" in defs[definition] else set()
        for name in names:
            assert name in properties, f"the schema's {definition} lacks {name}"
            assert f"{name}:" in doc or f"`{name}`" in doc, f"docs/workflows.md lacks {name}"
    assert {"hooks", "outputs"} <= set(schema["properties"])
    assert "type: call_workflow" in doc and "type: operation" in doc
    assert "on_failure: {message:" in doc and "--dry-run" in doc


def test_calls_and_operations_may_be_parallel_branches(wfdir: Path) -> None:
    _write(wfdir, "leaf", LEAF.format(name="leaf"))
    _write(
        wfdir,
        "fan",
        """\
name: fan
states:
  initial: both
  both: {type: parallel, parallel: [child, note], on_success: done}
  child: {type: call_workflow, workflow: leaf}
  note: {type: operation, operation: notify.log, inputs: {message: hi}}
  done: {type: terminal}
""",
    )
    state = runs.start_run("fan")
    assert state.status == RunStatus.COMPLETED, state.error
    assert get_store().load(str(state.states["child"].child_run_id)).parent_run_id == (
        state.workflow_id
    )
    assert state.states["note"].output == {"message": "hi", "level": "info"}


def test_a_call_that_times_out_cancels_its_child_and_fails(wfdir: Path) -> None:
    _write(
        wfdir,
        "slow",
        """\
name: slow
states:
  initial: nap
  nap: {type: step, command: "sleep 30", on_success: done}
  done: {type: terminal}
""",
    )
    _write(
        wfdir,
        "impatient",
        """\
name: impatient
states:
  initial: c
  c: {type: call_workflow, workflow: slow, timeout: 300ms, on_success: done, on_failure: late}
  done: {type: terminal}
  late: {type: terminal, status: failure, message: "{{ states.c.error }}"}
""",
    )
    state = runs.start_run("impatient")
    assert state.status == RunStatus.FAILED
    child_id = state.states["c"].child_run_id
    assert state.error == f"sub-workflow 'slow' (run {child_id}) timed out after 0.3s"
    child = get_store().load(str(child_id))
    assert child.status == RunStatus.CANCELLED
    assert child.states["nap"].status == StepStatus.CANCELLED


def test_bad_hooks_are_load_errors_with_their_place() -> None:
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(
            """\
name: w
hooks:
  workflow_start: [{command: "echo {{ oops"}, {log: a, command: b}]
  on_launch: [{log: x}]
states:
  initial: a
  a:
    type: step
    command: echo
    hooks: {pre: [{call: m.f, with: {v: "{{ ("}}]}
    on_success: done
  done: {type: terminal}
"""
        )
    errors = [(e["line"], e["message"]) for e in info.value.errors]
    assert any(line == 3 and "syntax error" in message for line, message in errors)
    assert (3, "a hook action has exactly one of 'command', 'log' or 'call'") in errors
    assert any(line == 10 and "syntax error" in message for line, message in errors)
    assert any("unknown hook 'on_launch'" in w for w in info.value.warnings)


def test_carried_over_hooks_count_once_and_a_later_visit_is_a_new_event(
    wfdir: Path, tmp_path: Path
) -> None:
    """After a crash the re-run step keeps its interrupted pre hook; when a route brings
    the run back to that step, its hooks run again."""
    _write(
        wfdir,
        "loopback",
        f"""\
name: loopback
states:
  initial: s
  s:
    type: step
    command: "true"
    hooks: {{pre: [{{command: "echo x >> {tmp_path}/pre.count"}}]}}
    on_success: check
  check:
    type: step
    command: "test -e {tmp_path}/again || {{ touch {tmp_path}/again; exit 1; }}"
    on_success: done
    on_failure: s
  done: {{type: terminal}}
""",
    )
    state = WorkflowState.new("loopback")
    state.status = RunStatus.RUNNING
    state.current_state = "s"
    record = {"kind": "command", "action": "...", "status": "completed", "output": ""}
    state.history.append(
        {
            "event": "recover",
            "from": "current",
            "previous_status": "running",
            "rewound": [{"name": "s", "status": "running", "hooks": {"pre": [record]}}],
        }
    )
    get_store().save(state)
    done = runs.execute(state.workflow_id)
    assert done.status == RunStatus.COMPLETED, done.error
    # The first (interrupted) visit's pre hook had run: not again; the second visit's did.
    assert _count(tmp_path / "pre.count") == 1


def test_a_step_that_a_route_brings_back_starts_a_new_child(wfdir: Path, tmp_path: Path) -> None:
    _write(
        wfdir,
        "counted",
        f"""\
name: counted
states:
  initial: a
  a: {{type: step, command: "echo x >> {tmp_path}/child.count", on_success: done}}
  done: {{type: terminal}}
""",
    )
    _write(
        wfdir,
        "comeback",
        f"""\
name: comeback
states:
  initial: c
  c: {{type: call_workflow, workflow: counted, on_success: check}}
  check:
    type: step
    command: "test -e {tmp_path}/again || {{ touch {tmp_path}/again; exit 1; }}"
    on_success: done
    on_failure: c
  done: {{type: terminal}}
""",
    )
    store = get_store()
    parent = WorkflowState.new("comeback")
    old = WorkflowState.new("counted", parent_run_id=parent.workflow_id)
    old.status = RunStatus.COMPLETED
    store.save(old)
    parent.status = RunStatus.RUNNING
    parent.current_state = "c"
    parent.history.append(
        {
            "event": "recover",
            "from": "current",
            "previous_status": "running",
            "rewound": [{"name": "c", "status": "running", "child_run_id": old.workflow_id}],
        }
    )
    store.save(parent)
    done = runs.execute(parent.workflow_id)
    assert done.status == RunStatus.COMPLETED, done.error
    # First visit: the interrupted step's completed child, taken as it is (not re-run);
    # second visit: a new child, which ran once.
    assert _count(tmp_path / "child.count") == 1
    assert done.states["c"].child_run_id not in (None, old.workflow_id)
    assert len(store.list()) == 3
