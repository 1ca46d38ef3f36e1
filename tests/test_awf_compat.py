"""awf workflow files (shared/awf-fixtures): what loads, what warns, what fails, and why."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wfstate.definitions import load_definition, loads_definition
from wfstate.definitions.awf import normalise_expression, normalise_template
from wfstate.exceptions import InvalidDefinition

# Copied unchanged from shared/awf-fixtures (see the README there).
AWF = Path(__file__).parent / "definition_fixtures" / "awf"


def _load(name: str):
    return load_definition(AWF / name)


def _warned_keys(warnings: tuple[str, ...]) -> set[str]:
    return {w.split("key '")[1].split("'")[0] for w in warnings if "key '" in w}


def test_signal_multi_step_validates_cleanly():
    d = _load("signal-multi-step.yaml")
    assert d.name == "signal-multi-step"
    assert d.warnings == ()
    assert d.initial == "step1"
    assert d.states["step1"].command == "echo 'Step 1' && sleep 2"
    assert d.states["step3"].on_success == "success_terminal"
    assert d.states["error_terminal"].status == "failure"


def test_example_simple_validates_with_warnings():
    d = _load("example-simple.yaml")
    assert d.name == "analyze-file"
    assert d.states["validate"].command == 'test -f "{{inputs.file_path}}"'
    assert d.states["validate"].timeout == 5.0
    assert d.states["extract"].timeout == 30.0
    assert d.inputs[0].required
    assert d.inputs[0].validation == {}
    assert d.inputs[1].default is False
    # hooks are supported now (workflow and step); capture is not
    assert _warned_keys(d.warnings) == {"author", "capture", "validation.file_exists"}
    file = str(AWF / "example-simple.yaml")
    assert (
        f"{file}:44: state 'extract': key 'capture' is not supported and is ignored" in d.warnings
    )
    assert [a.kind for a in d.states["validate"].hooks["pre"]] == ["log"]
    assert set(d.hooks) == {"workflow_start", "workflow_end", "workflow_error"}
    assert any("input 'file_path'" in w and "validation.file_exists" in w for w in d.warnings)


def test_valid_parallel_validates():
    d = _load("valid-parallel.yaml")
    assert d.name == "parallel-workflow"
    block = d.states["parallel_tasks"]
    assert block.type == "parallel"
    assert block.parallel == ("task_a", "task_b", "task_c")
    assert block.strategy == "best_effort"
    assert block.max_concurrent == 2
    assert d.states["task_a"].continue_on_error is True
    assert d.inputs[0].type == "integer"
    assert d.inputs[0].default == 3
    assert _warned_keys(d.warnings) == {"author", "tags", "depends_on"}
    assert sum("depends_on" in w for w in d.warnings) == 3  # task_b, task_c, aggregate


def test_retry_audit_validates():
    d = _load("retry-audit.yaml")
    retry = d.states["run"].retry
    assert retry is not None
    assert retry.max_attempts == 3
    assert retry.initial_delay == pytest.approx(0.2)
    assert retry.max_delay == 2.0
    assert retry.backoff == "exponential"
    assert retry.multiplier == 2.0
    assert retry.jitter == 0.3
    assert retry.retryable_exit_codes == (1, 2)
    assert d.warnings == ()


def test_other_files_that_validate():
    exit_error = _load("exit-execution-error.yaml")
    assert exit_error.states["failing_command"].timeout == 10.0
    assert exit_error.states["done"].status == "success"  # awf's default
    child = _load("subworkflow-child.yaml")
    assert child.states["process"].command == (
        'echo "Child processed: {{inputs.message}} (count={{inputs.count}})"'
    )
    assert child.warnings == ()
    assert [(o.name, o.from_) for o in child.outputs] == [("result", "states.process.output")]
    parent = _load("subworkflow-simple.yaml")
    call = parent.states["call_child"]
    assert call.type == "call_workflow"
    assert call.workflow == "subworkflow-child"
    assert call.call_inputs == {
        "message": "{{inputs.input_message}}",
        "count": "{{inputs.repeat_count}}",
    }
    assert call.call_outputs == {"result": "child_result"}
    assert call.timeout == 60.0
    assert parent.warnings == ()
    full = _load("valid-full.yaml")
    # operation: shell is awf's explicit default; hooks are supported
    assert _warned_keys(full.warnings) == {
        "author",
        "tags",
        "env",
        "capture",
        "validation.file_exists",
    }
    assert set(full.hooks) == {"workflow_start", "workflow_end", "workflow_error"}
    assert full.hooks["workflow_error"][0].text == "Error: {{error.message}}"
    hooks = _load("valid-with-hooks.yaml")
    assert _warned_keys(hooks.warnings) == {"capture"}
    assert [a.kind for a in hooks.hooks["workflow_cancel"]] == ["command", "log"]
    assert [a.text for a in hooks.states["step1"].hooks["post"]] == ['echo "POST_STEP1"']


def test_loop_fixtures_validate_cleanly():
    foreach = _load("loop-foreach.yaml")
    assert foreach.warnings == ()
    loop = foreach.states["process_files"]
    assert loop.type == "for_each"
    assert loop.items == '["a.txt", "b.txt", "c.txt"]'
    assert loop.body == ("echo_file",)
    assert loop.max_iterations == 10
    assert loop.on_success == "done"  # on_complete
    assert foreach.states["echo_file"].command == (
        'echo "Processing {{loop.Item}} ({{loop.Index}}/{{loop.Length}})"'
    )
    while_ = _load("loop-while.yaml")
    assert while_.warnings == ()
    countdown = while_.states["countdown"]
    assert countdown.type == "while"
    assert countdown.while_ == "states.decrement.exit_code == 0"
    assert countdown.body == ("decrement",)


def test_agent_steps_fail_clearly(tmp_path: Path):
    # Loops, sub-workflows and operations load now; awf's AI-provider steps stay a clear
    # load error naming the state, never a silent skip.
    path = tmp_path / "agent.yaml"
    path.write_text(
        "name: agent\n"
        "states:\n"
        "  initial: think\n"
        "  think:\n"
        "    type: agent\n"
        "    on_success: done\n"
        "  done:\n"
        "    type: terminal\n"
    )
    with pytest.raises(InvalidDefinition) as info:
        load_definition(path)
    assert info.value.errors == [
        {
            "file": str(path),
            "line": 5,
            "state": "think",
            "message": "state type 'agent' is not supported: "
            "awf 'agent' steps (AI providers) are not supported",
        }
    ]


def test_every_fixture_either_loads_or_names_its_problem(tmp_path: Path):
    files = sorted(AWF.glob("*.yaml"))
    assert len(files) >= 11
    for path in files:
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        errors: list[dict] = []
        try:
            load_definition(copy)
        except InvalidDefinition as exc:
            errors = exc.errors
            assert errors
        assert all(e["line"] > 0 and e["state"] for e in errors)


@pytest.mark.parametrize(
    ("awf", "jinja"),
    [
        ("{{.inputs.x}}", "{{inputs.x}}"),
        ("{{ .inputs.x }}", "{{ inputs.x }}"),
        ("{{inputs.x}}", "{{inputs.x}}"),
        ("{{.states.build.Output}}", "{{states.build.output}}"),
        (
            "{{.states.build.ExitCode}} {{.states.b-2.Stderr}}",
            "{{states.build.exit_code}} {{states.b-2.stderr}}",
        ),
        ("{{.states.build.Status}}", "{{states.build.status}}"),
        ("{{.workflow.Name}}/{{.workflow.ID}}", "{{workflow.name}}/{{workflow.id}}"),
        ("{% if .inputs.x %}a{% endif %}", "{% if inputs.x %}a{% endif %}"),
        ("{{ inputs.ratio * 1.5 }}", "{{ inputs.ratio * 1.5 }}"),
        ("{{ inputs.x | default('.a .b') }}", "{{ inputs.x | default('.a .b') }}"),
        ("{{ f(.inputs.x, .inputs.y) }}", "{{ f(inputs.x, inputs.y) }}"),
        ("{{ states.x.output.Output }}", "{{ states.x.output.Output }}"),
        ("plain .text {{.inputs.x}} .more", "plain .text {{inputs.x}} .more"),
        ("echo ${HOME}", "echo ${HOME}"),
    ],
)
def test_normalise_template(awf: str, jinja: str):
    assert normalise_template(awf) == jinja


def test_normalise_expression():
    assert (
        normalise_expression("states.decrement.ExitCode == 0") == "states.decrement.exit_code == 0"
    )
    assert normalise_expression("{{ .inputs.n > 3 }}") == "inputs.n > 3"
    assert normalise_expression('.states.a.Output == "x.Output"') == 'states.a.output == "x.Output"'


def test_awf_spellings_in_every_template_field_are_normalised():
    d = loads_definition(
        """\
name: w
states:
  initial: a
  a:
    type: step
    command: echo {{.inputs.x}}
    dir: "{{.inputs.dir}}"
    env: {A: "{{.states.a.Output}}"}
    on_success: b
  b:
    type: step
    call: mod.fn
    with: {v: "{{.states.a.ExitCode}}", nested: ["{{ .workflow.Name }}"]}
    transitions:
      - when: "states.a.ExitCode == 0"
        goto: done
      - goto: done
  done: {type: terminal, message: "done {{.inputs.x}}"}
"""
    )
    a, b = d.states["a"], d.states["b"]
    assert a.command == "echo {{inputs.x}}"
    assert a.dir == "{{inputs.dir}}"
    assert a.env == {"A": "{{states.a.output}}"}
    assert b.with_ == {"v": "{{states.a.exit_code}}", "nested": ["{{ workflow.name }}"]}
    assert b.transitions[0].when == "states.a.exit_code == 0"
    assert d.states["done"].message == "done {{inputs.x}}"
