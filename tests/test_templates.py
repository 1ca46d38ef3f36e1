"""Templates: context, text/value/expression rendering, and shell quoting by context."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from jinja2 import nodes

from tests.helpers import HOSTILE
from wfstate.definitions import (
    build_context,
    evaluate,
    loads_definition,
    render_command,
    render_text,
    render_value,
)
from wfstate.definitions.shell import QuoteTracker, annotate
from wfstate.definitions.templates import _env
from wfstate.exceptions import InvalidDefinition, TemplateError
from wfstate.state import StepResult, StepStatus, WorkflowState

# (template, expected stdout as a function of the value)
COMMANDS = [
    ("printf '%s' {{ inputs.v }}", lambda v: v),
    ("printf '%s' {{inputs.v}}", lambda v: v),
    ("printf '%s' \"{{ inputs.v }}\"", lambda v: v),
    ("printf '%s' '{{ inputs.v }}'", lambda v: v),
    ("printf '%s' pre{{ inputs.v }}post", lambda v: f"pre{v}post"),
    ("printf '%s' \"pre {{ inputs.v }} post\"", lambda v: f"pre {v} post"),
    ("printf '%s' 'pre {{ inputs.v }} post'", lambda v: f"pre {v} post"),
    ("printf '%s' \"{{ inputs.v }}\" '{{ inputs.v }}' {{ inputs.v }}", lambda v: v * 3),
    # a value inside a command substitution inside double quotes is unquoted again
    ("printf '%s' \"$(printf '%s' {{ inputs.v }})\"", lambda v: v.rstrip("\n")),
    ("printf '%s' \"$(printf '%s' \"{{ inputs.v }}\")\"", lambda v: v.rstrip("\n")),
    ("printf '%s' \"`printf '%s' {{ inputs.v }}`\"", lambda v: v.rstrip("\n")),
    ("printf '%s' `printf '%s' {{ inputs.v }}`x", None),  # unquoted: word-split, check no X
    ("printf '%s' {{ inputs.v }} # {{ inputs.v }}", lambda v: v),
    ("{% if inputs.v %}printf '%s' {{ inputs.v }}{% else %}printf '%s' ''{% endif %}", lambda v: v),
    ("{% for x in [inputs.v, inputs.v] %}printf '%s' \"{{ x }}\";{% endfor %}", lambda v: v * 2),
]


def _ctx(**inputs: Any) -> dict[str, Any]:
    return {"inputs": inputs, "states": {}, "workflow": {"id": "i", "name": "n", "version": ""}}


def _run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=10
    )


@pytest.mark.parametrize(("template", "expected"), COMMANDS)
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_stay_literal(tmp_path: Path, template: str, expected: Any, value: str):
    command = render_command(template, _ctx(v=value))
    result = _run(command, tmp_path)
    assert not (tmp_path / "X").exists(), f"injection via {command!r}"
    assert list(tmp_path.iterdir()) == []
    if expected is not None:
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected(value), command


def test_shell_raw_opts_a_trusted_fragment_out(tmp_path: Path):
    command = render_command("{{ inputs.cmd | shell_raw }} > out", _ctx(cmd="printf '%s' a b"))
    assert command == "printf '%s' a b > out"
    _run(command, tmp_path)
    assert (tmp_path / "out").read_text() == "ab"
    # without | shell_raw the same value is one word: the shell looks for a program of that
    # name; | safe (a Markup) is no longer a way out, it is quoted like any value
    assert render_command("{{ inputs.cmd }}", _ctx(cmd="printf x")) == "'printf x'"
    assert render_command("{{ inputs.cmd | safe }}", _ctx(cmd="printf x")) == "'printf x'"


def test_non_string_values_are_quoted_too(tmp_path: Path):
    assert render_command("echo {{ inputs.n }}", _ctx(n=3)) == "echo 3"
    value = [1, "a'b $(touch X)"]
    for template in ("printf '%s' {{ inputs.v }}", "printf '%s' '{{ inputs.v }}'"):
        result = _run(render_command(template, _ctx(v=value)), tmp_path)
        assert result.stdout == str(value)
    assert not (tmp_path / "X").exists()


def test_nul_byte_is_refused():
    with pytest.raises(TemplateError, match="NUL"):
        render_command("echo {{ inputs.v }}", _ctx(v="a\x00b"))


@pytest.mark.parametrize(
    "template",
    [
        "echo \\{{ inputs.v }}",  # a backslash would escape the value's first quote
        'echo "\\{{ inputs.v }}"',
        "echo ${{ inputs.v }}",  # GitHub Actions spelling: $ + value = an expansion
        'echo "${{ inputs.v }}"',
        'echo "`echo \\"{{ inputs.v }}\\"`"',  # escaped quotes inside backquotes
    ],
)
def test_ambiguous_placements_are_refused(template: str):
    with pytest.raises(TemplateError, match="placeholder"):
        render_command(template, _ctx(v="x"))


def test_ambiguous_placement_is_a_load_time_error():
    text = (
        "name: w\nstates:\n  initial: a\n  a:\n    type: step\n"
        "    command: echo ${{ inputs.v }}\n    on_success: b\n  b: {type: terminal}\n"
    )
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(text)
    assert info.value.errors[0]["line"] == 6
    assert "'$' right before a placeholder" in info.value.errors[0]["message"]


def test_quote_tracker_contexts():
    def contexts(text: str) -> list[str]:
        tree = _env.parse(text)
        annotate(tree)
        return [node.args[0].value for node in tree.find_all(nodes.Filter) if node.name == "_shq"]

    assert contexts("a {{x}} \"{{x}}\" '{{x}}' # {{x}}") == ["u0", "d0", "s0", "c0"]
    assert contexts("a 'it''s {{x}}'") == ["s0"]
    assert contexts("a \\' {{x}}") == ["u0"]  # an escaped quote opens nothing
    assert contexts('a "\\" {{x}}"') == ["d0"]
    assert contexts("a \"'{{x}}'\"") == ["d0"]  # single quotes are literal in double quotes
    assert contexts('a "$(b {{x}} "{{x}}")" {{x}}') == ["u0", "d0", "u0"]
    assert contexts("a $(b (c) {{x}}) {{x}}") == ["u0", "u0"]
    assert contexts("a#b {{x}}") == ["u0"]  # '#' inside a word starts no comment
    assert contexts("a # c\n{{x}}") == ["u0"]
    assert contexts("`a {{x}}`") == ["u1"]
    tracker = QuoteTracker()
    tracker.feed("echo '")
    assert tracker.context() == "s0"


def test_jinja_strings_with_braces_inside_placeholders():
    assert render_command("echo {{ '}}' ~ inputs.v }}", _ctx(v="a b")) == "echo '}}a b'"


def test_render_text_and_undefined_names():
    ctx = _ctx(tag="v1")
    assert render_text("released {{ inputs.tag }}", ctx) == "released v1"
    with pytest.raises(TemplateError) as info:
        render_text("released {{ inputs.tga }}", ctx)
    assert "inputs.tga" in str(info.value)
    assert "released {{ inputs.tga }}" in str(info.value)
    with pytest.raises(TemplateError, match="syntax error"):
        render_text("{{ inputs.tag ", ctx)


def test_sandbox_blocks_attribute_escapes():
    with pytest.raises(TemplateError, match="sandbox"):
        render_text("{{ inputs.tag.__class__.__mro__ }}", _ctx(tag="v1"))


def test_render_value_keeps_native_types():
    ctx = _ctx(dry_run=False, n=3, items=[1, 2], tag="v1", numeric="123")
    value = {
        "dry_run": "{{ inputs.dry_run }}",
        "n": " {{ inputs.n }} ",
        "items": "{{inputs.items}}",
        "numeric": "{{ inputs.numeric }}",  # a string stays a string (no literal_eval)
        "mixed": "tag {{ inputs.tag }}",
        "two": "{{ inputs.n }}{{ inputs.n }}",
        "nested": [{"x": "{{ inputs.n + 1 }}"}, "plain", 7, None],
    }
    assert render_value(value, ctx) == {
        "dry_run": False,
        "n": 3,
        "items": [1, 2],
        "numeric": "123",
        "mixed": "tag v1",
        "two": "33",
        "nested": [{"x": 4}, "plain", 7, None],
    }
    with pytest.raises(TemplateError, match=r"inputs\.nope"):
        render_value({"a": "{{ inputs.nope }}"}, ctx)


def test_evaluate():
    ctx = _ctx(n=5)
    ctx["states"] = {"publish": {"output": {"url": "http://x"}}}
    assert evaluate("inputs.n > 3", ctx) is True
    assert evaluate("inputs.n > 7", ctx) is False
    assert evaluate("states.publish.output.url is defined", ctx) is True
    assert evaluate("states.publish.output.nope is defined", ctx) is False
    assert evaluate("states.missing.output.url is defined", ctx) is False
    assert evaluate("states.missing is not defined", ctx) is True
    for bad in ("inputs.nope > 3", "inputs.nope", "states.missing.output == 1"):
        with pytest.raises(TemplateError, match="undefined"):
            evaluate(bad, ctx)
    with pytest.raises(TemplateError, match="syntax"):
        evaluate("inputs.n >", ctx)


def test_build_context():
    state = WorkflowState.new("release", inputs={"tag": "v1"}, workflow_version="1.2")
    state.states["build"] = StepResult(
        name="build", status=StepStatus.COMPLETED, output="built\n", stderr="", exit_code=0
    )
    state.states["lint"] = StepResult(name="lint", status=StepStatus.FAILED, exit_code=2, error="x")
    state.states["publish"] = StepResult(name="publish", status=StepStatus.RUNNING)
    ctx = build_context(state)
    assert ctx["inputs"] == {"tag": "v1"}
    assert set(ctx["states"]) == {"build", "lint"}
    build = ctx["states"]["build"]
    assert build["output"] == build["Output"] == "built\n"
    assert build["exit_code"] == build["ExitCode"] == 0
    assert build["status"] == build["Status"] == "completed"
    assert ctx["states"]["lint"]["Stderr"] is None
    assert ctx["workflow"]["id"] == ctx["workflow"]["Id"] == state.workflow_id
    assert ctx["workflow"]["name"] == ctx["workflow"]["Name"] == "release"
    assert ctx["workflow"]["version"] == "1.2"
    assert render_text("{{ states.build.Output }}|{{ workflow.Name }}", ctx) == "built\n|release"
    assert evaluate("states.lint.ExitCode == 2", ctx)
