"""Loops (for_each / while): semantics, templates, the side file, resume, load errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wfstate.definitions import loads_definition
from wfstate.engine import Executor, prepare_resume
from wfstate.exceptions import InvalidDefinition
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores.jsonfile import JSONFileStore
from wfstate.stores.memory import MemoryStore
from wfstate.stores.records import decode, encode


def _run(store: Any, yaml: str, inputs: dict[str, Any] | None = None) -> WorkflowState:
    definition = loads_definition(yaml)
    values = {i.name: i.default for i in definition.inputs if i.has_default}
    state = WorkflowState.new(definition.name, inputs={**values, **(inputs or {})})
    return Executor(store, definition).execute(state)


def _iterations(store: Any, state: WorkflowState, loop: str) -> list[dict[str, Any]]:
    summary = state.states[loop].loop
    assert summary is not None
    found, _ = decode(store.read_records(state.workflow_id, summary["file"]))
    return [r for r in found if r["kind"] == "iteration"]


def _outputs(store: Any, state: WorkflowState, loop: str, step: str) -> list[Any]:
    return [r["states"][step]["output"] for r in _iterations(store, state, loop)]


@pytest.fixture(params=["json", "memory", "contract"])
def any_store(request: Any, tmp_path: Path) -> Any:
    """The file store (real appends), and two on the StateStore defaults."""
    from tests.contract_store import ContractStore

    if request.param == "contract":
        return ContractStore(tmp_path / "contract")
    return JSONFileStore(tmp_path) if request.param == "json" else MemoryStore()


FOREACH = """
name: each
inputs:
  - {name: names, type: string, default: '["ann", "bob", "cy"]'}
states:
  initial: greet
  greet:
    type: for_each
    items: "{{ inputs.names }}"
    body: [hello, shout]
    on_complete: report
  hello:
    type: step
    command: >-
      echo "{{ loop.index1 }}/{{ loop.length }} {{ loop.item }}
      first={{ loop.first }} last={{ loop.last }}"
  shout:
    type: step
    command: echo {{ states.hello.output | trim | upper }}
    on_success: greet
  report:
    type: step
    command: >-
      echo {{ loops.greet.count }} {{ loops.greet.iterations[0].hello.output | trim }}
      / {{ loops.greet.iterations[-1].shout.output | trim }}
    on_success: done
  done: {type: terminal}
"""


def test_for_each_keeps_every_iteration_and_templates_read_them(any_store: Any) -> None:
    state = _run(any_store, FOREACH)
    assert state.status == RunStatus.COMPLETED, state.error
    assert _outputs(any_store, state, "greet", "hello") == [
        "1/3 ann first=True last=False\n",
        "2/3 bob first=False last=False\n",
        "3/3 cy first=False last=True\n",
    ]
    # states.<body step> inside the loop is the current iteration's
    assert _outputs(any_store, state, "greet", "shout") == [
        "1/3 ANN FIRST=TRUE LAST=FALSE\n",
        "2/3 BOB FIRST=FALSE LAST=FALSE\n",
        "3/3 CY FIRST=FALSE LAST=TRUE\n",
    ]
    assert state.states["report"].output == (
        "3 1/3 ann first=True last=False / 3/3 CY FIRST=FALSE LAST=TRUE\n"
    )
    assert [r["item"] for r in _iterations(any_store, state, "greet")] == ["ann", "bob", "cy"]


def test_items_native_list_yaml_list_and_bad_items(store: JSONFileStore) -> None:
    native = """
name: native
inputs:
  - {name: n, type: integer, default: 3}
states:
  initial: a
  a:
    type: for_each
    items: "{{ range(inputs.n) | list }}"
    body: [s]
    on_complete: b
  s: {type: step, command: "echo {{ loop.item * 10 }}"}
  b:
    type: for_each
    items: [{x: 1}, {x: 2}]
    body: [t]
    on_complete: done
  t: {type: step, command: "echo {{ loop.item.x }}"}
  done: {type: terminal}
"""
    state = _run(store, native)
    assert state.status == RunStatus.COMPLETED, state.error
    assert _outputs(store, state, "a", "s") == ["0\n", "10\n", "20\n"]
    assert _outputs(store, state, "b", "t") == ["1\n", "2\n"]
    bad = native.replace("{{ range(inputs.n) | list }}", "{{ inputs.n }}")
    failed = _run(store, bad)
    assert failed.status == RunStatus.FAILED
    assert failed.states["a"].status == StepStatus.FAILED
    assert "is a int, not a list" in str(failed.states["a"].error)


def test_max_iterations_limits_for_each_and_while_and_is_templatable(store: JSONFileStore) -> None:
    yaml = """
name: limits
inputs:
  - {name: limit, type: integer, default: 2}
states:
  initial: a
  a:
    type: for_each
    items: "[1, 2, 3, 4]"
    max_iterations: "{{ inputs.limit }}"
    body: [s]
    on_complete: w
  s: {type: step, command: "echo {{ loop.item }}"}
  w:
    type: while
    while: "true"
    max_iterations: 3
    body: [t]
    on_complete: done
  t: {type: step, command: "echo {{ loop.index }} {{ loop.length is none }}"}
  done: {type: terminal}
"""
    state = _run(store, yaml)
    assert state.status == RunStatus.COMPLETED, state.error
    assert _outputs(store, state, "a", "s") == ["1\n", "2\n"]
    assert state.states["a"].loop["total_items"] == 4  # type: ignore[index]
    assert _outputs(store, state, "w", "t") == ["0 True\n", "1 True\n", "2 True\n"]
    assert state.states["w"].loop["stopped"] == "max_iterations"  # type: ignore[index]
    over = _run(store, yaml, {"limit": 10001})
    assert over.status == RunStatus.FAILED
    assert "must be an integer from 1 to 10000" in str(over.states["a"].error)


def test_default_max_iterations_is_100(store: JSONFileStore) -> None:
    yaml = """
name: forever
states:
  initial: w
  w: {type: while, while: "true", body: [t], on_complete: done}
  t: {type: step, call: tests.engine_steps.noop}
  done: {type: terminal}
"""
    state = _run(store, yaml)
    assert state.status == RunStatus.COMPLETED, state.error
    assert state.states["w"].loop["done"] == 100  # type: ignore[index]


def test_break_when_and_a_body_step_leaving_the_loop(store: JSONFileStore) -> None:
    yaml = """
name: breaks
states:
  initial: a
  a:
    type: for_each
    items: "[1, 2, 3, 4, 5]"
    body: [s]
    break_when: "states.s.output | trim == '3'"
    on_complete: b
  s: {type: step, command: "echo {{ loop.item }}", on_success: a}
  b:
    type: for_each
    items: "[1, 2, 3, 4, 5]"
    body: [t]
    on_complete: done
  t:
    type: step
    command: "echo {{ loop.item }}"
    transitions:
      - {when: "loop.item == 2", goto: escaped}
      - {goto: b}
  escaped: {type: step, command: echo out, on_success: done}
  done: {type: terminal}
"""
    state = _run(store, yaml)
    assert state.status == RunStatus.COMPLETED, state.error
    assert _outputs(store, state, "a", "s") == ["1\n", "2\n", "3\n"]
    assert state.states["a"].loop["broke_at"] == 2  # type: ignore[index]
    assert _outputs(store, state, "b", "t") == ["1\n", "2\n"]
    assert _iterations(store, state, "b")[-1]["exit_to"] == "escaped"
    assert state.states["escaped"].output == "out\n"


def test_nested_loops_see_their_parent(store: JSONFileStore) -> None:
    yaml = """
name: nested
states:
  initial: rows
  rows:
    type: for_each
    items: '["r1", "r2"]'
    body: [cols]
    on_complete: done
  cols:
    type: for_each
    items: "[1, 2]"
    body: [cell]
  cell:
    type: step
    command: "echo {{ loop.parent.item }}.{{ loop.item }} {{ loop.Parent.Index }}"
  done: {type: terminal}
"""
    state = _run(store, yaml)
    assert state.status == RunStatus.COMPLETED, state.error
    rows = _iterations(store, state, "rows")
    cells = []
    for row in rows:
        summary = row["states"]["cols"]["loop"]
        found, _ = decode(store.read_records(state.workflow_id, summary["file"]))
        cells += [r["states"]["cell"]["output"] for r in found if r["kind"] == "iteration"]
    assert cells == ["r1.1 0\n", "r1.2 0\n", "r2.1 1\n", "r2.2 1\n"]


def test_parallel_for_each_keeps_each_iterations_own_results(store: JSONFileStore) -> None:
    yaml = """
name: fan
states:
  initial: a
  a:
    type: for_each
    items: "{{ range(12) | list }}"
    max_concurrent: 4
    body: [s, t]
    on_complete: report
  s: {type: step, command: "echo {{ loop.item }}"}
  t: {type: step, command: "echo {{ states.s.output | trim }}-{{ loop.item }}"}
  report:
    type: step
    command: >-
      echo {% for it in loops.a.iterations %}{{ it.index }}={{ it.t.output | trim }},{% endfor %}
    on_success: done
  done: {type: terminal}
"""
    state = _run(store, yaml)
    assert state.status == RunStatus.COMPLETED, state.error
    # Templates read the iterations by index, whatever order they finished in.
    assert state.states["report"].output == "".join(f"{i}={i}-{i}," for i in range(12)) + "\n"
    records = sorted(_iterations(store, state, "a"), key=lambda r: r["index"])
    assert [r["states"]["t"]["output"] for r in records] == [f"{i}-{i}\n" for i in range(12)]
    assert not any("." in key for key in state.states)


def test_failed_iteration_fails_the_loop_and_resume_runs_only_it_again(tmp_path: Path) -> None:
    store = JSONFileStore(tmp_path)
    flag = tmp_path / "ok"
    yaml = f"""
name: flaky
states:
  initial: a
  a:
    type: for_each
    items: "[1, 2, 3, 4]"
    body: [s]
    on_complete: done
  s:
    type: step
    command: >-
      echo {{{{ loop.item }}}} >> {tmp_path}/log &&
      [ {{{{ loop.item }}}} != 3 -o -e {flag} ]
  done: {{type: terminal}}
"""
    definition = loads_definition(yaml)
    state = Executor(store, definition).execute(WorkflowState.new("flaky"))
    assert state.status == RunStatus.FAILED
    assert state.current_state == "a"
    assert "iteration 2: step 's' failed (exit code 1)" in str(state.states["a"].error)
    flag.touch()
    state = store.load(state.workflow_id)
    prepare_resume(state, definition)
    state = Executor(store, definition).execute(state)
    assert state.status == RunStatus.COMPLETED, state.error
    assert (tmp_path / "log").read_text().split() == ["1", "2", "3", "3", "4"]


def test_cancelled_loop_resumes_in_its_iteration(tmp_path: Path) -> None:
    store = JSONFileStore(tmp_path)
    yaml = f"""
name: stopper
states:
  initial: a
  a: {{type: for_each, items: "[1, 2, 3]", body: [s], on_complete: done}}
  s: {{type: step, command: "echo {{{{ loop.item }}}} >> {tmp_path}/log"}}
  done: {{type: terminal}}
"""
    definition = loads_definition(yaml)
    ex = Executor(store, definition)
    calls: list[int] = []

    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "iteration_finished":
            calls.append(event["index"])
            ex.cancel_event.set()

    ex.progress = progress
    state = ex.execute(WorkflowState.new("stopper"))
    assert state.status == RunStatus.CANCELLED
    assert state.states["a"].status == StepStatus.CANCELLED
    assert calls == [0]
    prepare_resume(state, definition)
    state = Executor(store, definition).execute(state)
    assert state.status == RunStatus.COMPLETED, state.error
    assert (tmp_path / "log").read_text().split() == ["1", "2", "3"]


def test_torn_last_record_is_dropped_and_unacknowledged_records_truncated(
    tmp_path: Path,
) -> None:
    records = [encode({"kind": "iteration", "index": i}) for i in range(3)]
    whole = b"".join(records)
    assert decode(whole) == ([{"kind": "iteration", "index": i} for i in range(3)], len(whole))
    for cut in range(1, len(records[2])):
        found, size = decode(whole[: len(whole) - cut])
        assert [r["index"] for r in found] == [0, 1]
        assert size == len(records[0]) + len(records[1])
    flipped = bytearray(whole)
    flipped[-3] ^= 1  # a bit flipped in the last payload: its checksum fails
    assert [r["index"] for r in decode(bytes(flipped))[0]] == [0, 1]
    assert decode(whole, limit=2)[1] == len(records[0]) + len(records[1])

    # On resume, records the document does not count are cut off the side file.
    store = JSONFileStore(tmp_path)
    state = _run(store, FOREACH)
    summary = state.states["greet"].loop
    assert summary is not None
    path = store.loops_dir(state.workflow_id) / f"{summary['file']}.log"
    size = path.stat().st_size
    store.append_records(state.workflow_id, summary["file"], encode({"kind": "iteration"})[:-5])
    state.states["greet"].status = StepStatus.RUNNING
    state.current_state = "greet"
    state.status = RunStatus.RUNNING
    definition = loads_definition(FOREACH)
    prepare_resume(state, definition)
    state = Executor(store, definition).execute(state)
    assert state.status == RunStatus.COMPLETED, state.error
    assert path.stat().st_size == size


def test_store_delete_and_sweep_know_the_loops_directory(tmp_path: Path) -> None:
    store = JSONFileStore(tmp_path)
    state = _run(store, FOREACH)
    loops = store.loops_dir(state.workflow_id)
    assert loops.is_dir()
    other = _run(store, FOREACH)
    store.path_for(other.workflow_id).unlink()  # a delete interrupted half-way
    assert str(store.loops_dir(other.workflow_id)) in store.sweep()
    assert not list(store.directory.glob(f"{other.workflow_id}*"))  # no sidecar left
    assert loops.is_dir()
    store.delete(state.workflow_id)
    assert not loops.exists()


@pytest.mark.parametrize(
    ("states", "message"),
    [
        (
            "a: {type: for_each, items: '[1]', body: [nope], on_complete: done}",
            "body step 'nope' does not exist",
        ),
        (
            "a: {type: for_each, items: '[1]', body: [a], on_complete: done}",
            "a loop cannot be in its own body",
        ),
        (
            "a: {type: for_each, body: [s], on_complete: done}\n  s: {type: step, command: 'true'}",
            "'items' is required",
        ),
        (
            "a: {type: while, while: 'x ==', body: [s], on_complete: done}\n"
            "  s: {type: step, command: 'true'}",
            "syntax error",
        ),
        (
            "a: {type: for_each, items: '[1]', body: [s], max_iterations: 0, on_complete: done}\n"
            "  s: {type: step, command: 'true'}",
            "max_iterations",
        ),
        (
            "a: {type: for_each, items: '[1]', body: [s], on_complete: done}\n"
            "  s: {type: step, command: 'true'}\n"
            "  b: {type: for_each, items: '[1]', body: [s], on_complete: done}",
            "already in the body of loop 'a'",
        ),
        (
            "a: {type: for_each, items: '[1]', body: [done], on_complete: done}",
            "a body holds steps and loops",
        ),
    ],
)
def test_bad_loops_are_load_errors(states: str, message: str) -> None:
    yaml = f"name: bad\nstates:\n  initial: a\n  {states}\n  done: {{type: terminal}}\n"
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(yaml)
    assert any(message in e["message"] for e in info.value.errors), info.value.errors


def test_keys_of_other_state_kinds_on_a_loop_are_warnings() -> None:
    definition = loads_definition(
        "name: warn\nstates:\n  initial: a\n"
        "  a: {type: while, while: 'true', body: [s], max_concurrent: 2, on_complete: done}\n"
        "  s: {type: step, command: 'true'}\n  done: {type: terminal}\n"
    )
    assert definition.warnings == (
        "<string>:4: state 'a': key 'max_concurrent' does not apply to a while state "
        "and is ignored",
    )
    # awf's break_condition is break_when; a body step without a route goes on in the body
    awf = loads_definition(
        "name: awf\nstates:\n  initial: a\n"
        "  a: {type: for_each, items: '[1]', body: [s, t], break_condition: 'true', "
        "on_complete: done}\n"
        "  s: {type: step, command: 'true'}\n  t: {type: step, command: 'true'}\n"
        "  done: {type: terminal}\n"
    )
    assert awf.states["a"].break_when == "true" and awf.warnings == ()


def test_resume_from_a_body_step_is_refused_and_previous_skips_the_body(
    store: JSONFileStore,
) -> None:
    from wfstate.exceptions import NotResumable

    state = _run(store, FOREACH)
    definition = loads_definition(FOREACH)
    with pytest.raises(NotResumable, match="'hello' is in the body of loop 'greet'"):
        prepare_resume(state, definition, from_state="hello")
    # "previous" is the last completed top-level state: report, not a body step
    prepare_resume(state, definition, from_state="previous")
    assert state.current_state == "report"


def test_body_steps_jumping_for_ever_fail_the_iteration(
    store: JSONFileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wfstate.engine import loops

    monkeypatch.setattr(loops, "MAX_BODY_RUNS", 7)
    yaml = """
name: cycle
states:
  initial: a
  a: {type: for_each, items: "[1]", body: [s, t], on_complete: done, on_failure: done}
  s: {type: step, call: tests.engine_steps.noop}
  t: {type: step, call: tests.engine_steps.noop, on_success: s}
  done: {type: terminal}
"""
    state = _run(store, yaml)
    assert state.states["a"].status == StepStatus.FAILED
    assert state.states["a"].error == "iteration 0: 7 body steps ran in one iteration"
    assert state.status == RunStatus.COMPLETED  # its on_failure went on


def test_quarantine_keeps_a_corrupt_runs_iterations(tmp_path: Path) -> None:
    store = JSONFileStore(tmp_path)
    state = _run(store, FOREACH)
    store.path_for(state.workflow_id).write_bytes(b"{not json")
    where = store.quarantine(state.workflow_id)
    assert where is not None
    kept = store.quarantine_directory / f"{state.workflow_id}.loops"
    assert kept.is_dir() and list(kept.glob("greet.*.log"))
    assert not store.loops_dir(state.workflow_id).exists()


def test_each_iterations_big_output_is_kept_whole(store: JSONFileStore) -> None:
    yaml = """
name: big
states:
  initial: a
  a: {type: for_each, items: '["x", "y"]', body: [s], on_complete: done}
  s: {type: step, command: "printf '%040d{{ loop.item }}' 0"}
  done: {type: terminal}
"""
    definition = loads_definition(yaml)
    state = Executor(store, definition, max_inline_output=10).execute(WorkflowState.new("big"))
    assert state.status == RunStatus.COMPLETED, state.error
    file = state.states["a"].loop["file"]  # type: ignore[index]
    records = _iterations(store, state, "a")
    assert [r["states"]["s"]["output_truncated"] for r in records] == [True, True]
    for index, item in enumerate("xy"):
        whole = store.load_output(state.workflow_id, f"{file}.{index}.s", "stdout")
        assert whole == b"0" * 40 + item.encode()


def test_the_loop_example_in_the_docs_loads() -> None:
    text = (Path(__file__).parent.parent / "docs" / "workflows.md").read_text()
    example = text.split("## Loops", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    definition = loads_definition(example)
    assert definition.warnings == ()
    customers = definition.states["customers"]
    assert customers.max_concurrent == 4 and customers.body == ("bill", "notify")
    assert definition.states["poll"].max_iterations == "{{ inputs.attempts }}"


def test_cancelled_parallel_loop_resumes_without_rerunning_finished_iterations(
    tmp_path: Path,
) -> None:
    store = JSONFileStore(tmp_path)
    yaml = f"""
name: fanstop
states:
  initial: a
  a:
    type: for_each
    items: "{{{{ range(1, 11) | list }}}}"
    max_concurrent: 3
    body: [s]
    on_complete: done
  s: {{type: step, command: "echo {{{{ loop.item }}}} >> {tmp_path}/log"}}
  done: {{type: terminal}}
"""
    definition = loads_definition(yaml)
    ex = Executor(store, definition)
    finished: list[int] = []

    def progress(event: dict[str, Any]) -> None:
        if event["event"] == "iteration_finished":
            finished.append(event["index"])
            if len(finished) == 3:
                ex.cancel_event.set()

    ex.progress = progress
    state = ex.execute(WorkflowState.new("fanstop"))
    assert state.status == RunStatus.CANCELLED
    recorded = {r["index"] + 1 for r in _iterations(store, state, "a")}
    assert len(recorded) >= 3 and len(recorded) < 10
    prepare_resume(state, definition)
    state = Executor(store, definition).execute(state)
    assert state.status == RunStatus.COMPLETED, state.error
    runs = (tmp_path / "log").read_text().split()
    assert sorted({int(r) for r in runs}) == list(range(1, 11))
    for item in range(1, 11):
        assert 1 <= runs.count(str(item)) <= 2
        if item in recorded:
            assert runs.count(str(item)) == 1
    assert len(_iterations(store, state, "a")) == 10
