"""Loading, JSON Schema and semantic validation, durations, the registry."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from wfstate.definitions import (
    Registry,
    RetryPolicy,
    definition_from_dict,
    get_registry,
    load_definition,
    loads_definition,
    parse_duration,
    resolve_definition,
    workflow_schema,
)
from wfstate.definitions import registry as registry_module
from wfstate.exceptions import InvalidDefinition, WorkflowNotFound

FIXTURES = Path(__file__).parent / "definition_fixtures"


def _errors(text: str) -> list[dict[str, Any]]:
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(textwrap.dedent(text))
    return info.value.errors


def _messages(text: str) -> list[tuple[int, str | None, str]]:
    return [(e["line"], e["state"], e["message"]) for e in _errors(text)]


MINIMAL = """\
name: w
states:
  initial: a
  a: {type: step, command: echo hi, on_success: done}
  done: {type: terminal}
"""


def test_full_example_loads():
    path = FIXTURES / "release.yaml"
    d = load_definition(path)
    assert d.name == "release"
    assert d.version == "1.2.0"
    assert d.initial == "build"
    assert d.path == path
    assert d.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert d.warnings == ()
    assert [i.name for i in d.inputs] == ["tag", "dry_run", "jobs"]
    assert d.inputs[1].has_default
    assert d.inputs[1].default is False
    build = d.states["build"]
    assert build.type == "step"
    assert build.line == 19
    assert build.command == "make build TAG={{ inputs.tag }}"
    assert build.env == {"TAG": "{{ inputs.tag }}", "JOBS": "4", "VERBOSE": "true"}
    assert build.timeout == 300.0
    assert build.retry == RetryPolicy(
        max_attempts=3,
        initial_delay=1.0,
        max_delay=30.0,
        backoff="exponential",
        multiplier=2.0,
        jitter=0.1,
        retryable_exit_codes=(75,),
    )
    checks = d.states["checks"]
    assert checks.parallel == ("unit", "lint")
    assert checks.max_concurrent == 2
    assert d.states["lint"].continue_on_error is True
    publish = d.states["publish"]
    assert publish.call == "myapp.steps.publish"
    assert publish.command is None
    assert publish.with_["dry_run"] == "{{ inputs.dry_run }}"
    assert [(t.when, t.goto) for t in publish.transitions] == [
        ("states.publish.output.url is defined", "done"),
        (None, "failed"),
    ]
    assert d.states["failed"].status == "failure"
    assert d.states["done"].message == "released {{ inputs.tag }}"
    graph = d.graph()
    assert {"source": "checks", "target": "unit", "kind": "branch", "label": ""} in graph["edges"]


def test_three_errors_reported_at_once_with_lines():
    with pytest.raises(InvalidDefinition) as info:
        load_definition(FIXTURES / "three-errors.yaml")
    exc = info.value
    assert [(e["line"], e["state"]) for e in exc.errors] == [
        (7, "build"),
        (8, "build"),
        (10, "both"),
    ]
    messages = [e["message"] for e in exc.errors]
    assert "invalid duration '5 minutes'" in messages[0]
    assert "on_success target 'deploy' does not exist" in messages[1]
    assert "not both" in messages[2]
    file = str(FIXTURES / "three-errors.yaml")
    assert all(e["file"] == file for e in exc.errors)
    text = str(exc)
    assert f"{file}:7: state 'build': invalid duration" in text
    assert f"{file}:8: state 'build': on_success target 'deploy'" in text
    assert f"{file}:10: state 'both': a step has either" in text
    assert exc.exit_code == 2
    clone = pickle.loads(pickle.dumps(exc))
    assert clone.errors == exc.errors


def test_unreachable_unknown_targets_and_branch_shapes():
    found = _messages(
        """\
        name: w
        states:
          initial: a
          a:
            type: step
            command: echo
            on_success: par
            on_failure: nowhere
            transitions:
              - when: inputs.x
                goto: elsewhere
          par:
            type: parallel
            parallel: [done, par, ghost, inner]
            on_success: done
          inner: {type: parallel, parallel: [a]}
          lonely: {type: terminal}
          done: {type: terminal}
        """
    )
    assert (8, "a", "on_failure target 'nowhere' does not exist") in found
    assert (11, "a", "transition target 'elsewhere' does not exist") in found
    assert (
        14,
        "par",
        "parallel branch 'done' is a terminal state; branches must be steps",
    ) in found
    assert (14, "par", "a parallel block cannot be its own branch") in found
    assert (14, "par", "parallel branch 'ghost' does not exist") in found
    assert (
        14,
        "par",
        "parallel branch 'inner' is a parallel state; branches must be steps",
    ) in found
    assert any(e[:2] == (17, "lonely") and "unreachable" in e[2] for e in found)


def test_unknown_initial_and_no_terminal():
    found = _messages(
        """\
        name: w
        states:
          initial: start
          a: {type: step, command: echo, on_success: a}
        """
    )
    assert (3, None, "initial state 'start' does not exist") in found
    assert any("no terminal state" in m for _, _, m in found)


def test_cycle_without_exit_and_dead_end():
    found = _messages(
        """\
        name: w
        states:
          initial: a
          a: {type: step, command: echo, on_success: b, on_failure: done}
          b: {type: step, command: echo, on_success: c}
          c: {type: step, command: echo, on_success: b}
          d: {type: step, command: echo}
          done: {type: terminal}
        """
    )
    assert (5, "b", "state 'b' cannot reach a terminal state (a cycle with no way out)") in found
    assert (6, "c", "state 'c' cannot reach a terminal state (a cycle with no way out)") in found
    assert not any(state == "a" for _, state, _ in found)  # a can fail over to done
    assert any(state == "d" and "unreachable" in m for _, state, m in found)


def test_dead_end_step():
    found = _messages(
        """\
        name: w
        states:
          initial: a
          a: {type: step, command: echo, on_success: b}
          b: {type: step, command: echo}
          done: {type: terminal}
        """
    )
    assert (
        5,
        "b",
        "state 'b' has no on_success, on_failure or transitions, so the run cannot go on after it",
    ) in found


def test_cycle_with_exit_is_fine():
    d = loads_definition(
        textwrap.dedent(
            """\
            name: poll
            states:
              initial: check
              check:
                type: step
                command: test -f ready
                on_success: done
                on_failure: wait
              wait: {type: step, command: sleep 1, on_success: check}
              done: {type: terminal}
            """
        )
    )
    assert set(d.states) == {"check", "wait", "done"}


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("command: echo\n    call: a.b", "not both"),
        ("timeout: 3s", "a step needs 'command'"),
        ("command: echo {{ inputs.x", "syntax error"),
        ("command: echo\n    dir: '{% if %}'", "syntax error"),
        ("command: echo\n    env: {A: '{{ }}'}", "syntax error"),
        ("command: echo\n    timeout: -1", "invalid duration -1"),
        ("command: echo\n    timeout: 5d", "invalid duration '5d'"),
        ("command: echo\n    retry: {max_attempts: 0}", "max_attempts: 0 is less than the minimum"),
        ("command: echo\n    retry: {initial_delay: soon}", "invalid duration 'soon'"),
        ("call: not-a-path", "call: 'not-a-path' does not match"),
        (
            "command: echo\n    continue_on_error: maybe",
            "continue_on_error: 'maybe' is not of type",
        ),
        ("command: echo\n    transitions: [{when: 'inputs.x >', goto: done}]", "syntax error"),
        ("command: echo\n    transitions: [{when: 'x'}]", "'goto' is required"),
        ("command: echo\n    with: {a: '{{ 1 +  }}'}", "syntax error"),
    ],
)
def test_step_errors(snippet: str, message: str):
    text = (
        "name: w\nstates:\n  initial: a\n  a:\n    type: step\n"
        f"    {snippet}\n    on_success: done\n  done: {{type: terminal}}\n"
    )
    errors = _errors(text)
    assert any(message in e["message"] for e in errors), errors
    assert all(e["state"] == "a" for e in errors), errors
    assert all(e["line"] >= 4 for e in errors), errors


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("states: {initial: a}\n", "'name' is required", 1),
        ("name: Bad_Name\nstates: {initial: a}\n", "does not match", 1),
        ("name: w\n", "'states' is required", 1),
        ("name: w\nstates:\n  a: {type: terminal}\n", "'initial' is required", 2),
        ("name: w\nstates:\n  initial: a\n  a: {type: loop}\n", "unknown state type 'loop'", 4),
        (
            "name: w\nstates:\n  initial: a\n  a: {command: x}\n  a: {type: terminal}\n",
            "state 'a' is defined twice",
            5,
        ),
        ("name: w\nstates:\n  initial: a\n  a: terminal\n", "is not of type 'object'", 4),
        ("name: w\nstates:\n  initial: a\n  a: {description: x}\n", "missing 'type'", 4),
        (
            "name: w\nstates:\n  initial: a\n  a b: {type: terminal}\n",
            "invalid state name 'a b'",
            4,
        ),
        ("name: w\nstates: [1, 2]\n", "is not of type 'object'", 2),
        ("- just\n- a list\n", "is not of type 'object'", 1),
        ("name: w\nstates: {initial: a\n", "invalid YAML", 3),
        (
            "name: w\ninputs:\n  - {name: n, type: float}\nstates: {initial: a}\n",
            "'float' is not one of",
            3,
        ),
        (
            "name: w\ninputs:\n  - {name: n, type: integer, default: x}\nstates: {initial: a}\n",
            "default of input 'n': expected an integer",
            3,
        ),
        (
            "name: w\ninputs:\n  - {name: n, validation: {pattern: '['}}\nstates: {initial: a}\n",
            "invalid pattern",
            3,
        ),
        (
            "name: w\ninputs:\n  - {name: n}\n  - {name: n}\nstates: {initial: a}\n",
            "input 'n' is declared twice",
            4,
        ),
    ],
)
def test_document_errors(text: str, message: str, line: int):
    errors = _errors(text)
    hits = [e for e in errors if message in e["message"]]
    assert hits, errors
    assert hits[0]["line"] == line


def test_state_inferred_type_and_defaults():
    d = loads_definition(
        "name: w\nstates:\n  initial: a\n  a: {command: echo, on_success: p}\n"
        "  p: {parallel: [b], on_success: done}\n  b: {call: m.f}\n  done: {type: terminal}\n"
    )
    assert d.states["a"].type == "step"
    assert d.states["p"].type == "parallel"
    assert d.states["p"].strategy == "all_succeed"
    assert d.states["done"].status == "success"
    assert d.states["a"].retry is None
    assert d.states["a"].timeout is None


def test_unknown_keys_are_warnings_with_suggestions():
    d = load_definition(FIXTURES / "typos.yaml")
    file = str(FIXTURES / "typos.yaml")
    assert d.warnings == (
        f"{file}:7: state 'build': unknown key 'on_sucess' is ignored (did you mean 'on_success'?)",
        f"{file}:11: state 'done': unknown key 'mesage' is ignored (did you mean 'message'?)",
    )


def test_keys_of_another_state_type_are_warnings():
    d = loads_definition(
        "name: w\nstates:\n  initial: a\n"
        "  a: {type: step, command: x, on_success: done, strategy: best_effort}\n"
        "  done: {type: terminal, on_success: a}\n"
    )
    assert (
        "<string>:4: state 'a': key 'strategy' does not apply to a step state and is ignored"
        in d.warnings
    )
    assert (
        "<string>:5: state 'done': key 'on_success' does not apply to a terminal state "
        "and is ignored" in d.warnings
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (5, 5.0),
        (2.5, 2.5),
        ("300ms", 0.3),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("10", 10.0),
        (" 2m ", 120.0),
        (0, 0.0),
    ],
)
def test_parse_duration(value: Any, seconds: float):
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["5d", "-1s", "", "s", "1 h 2m", True, -3, None, [1], float("nan")]
)
def test_parse_duration_rejects(value: Any):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(value)


def test_schema_is_valid_draft_2020_12_and_accepts_the_examples():
    schema = workflow_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(FIXTURES.glob("*.yaml")):
        if path.name == "three-errors.yaml":
            continue
        data = yaml.safe_load(path.read_bytes())
        assert list(validator.iter_errors(data)) == [], path
    bad = {"name": "w", "states": {"initial": "a", "a": {"type": "step", "timeout": "soon"}}}
    assert list(validator.iter_errors(bad))


def test_schema_is_package_data():
    from importlib import resources

    text = resources.files("wfstate").joinpath("schema/workflow.schema.json").read_text("utf-8")
    assert json.loads(text)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_definition_from_dict():
    data = yaml.safe_load(MINIMAL)
    d = definition_from_dict(data)
    assert d.states["a"].command == "echo hi"
    assert len(d.sha256) == 64
    assert definition_from_dict(data).sha256 == d.sha256
    assert definition_from_dict(data, source_bytes=b"x").sha256 == hashlib.sha256(b"x").hexdigest()
    with pytest.raises(InvalidDefinition) as info:
        definition_from_dict({"name": "w", "states": {"initial": "nope"}})
    assert info.value.errors[0]["file"] == "<dict>"


def test_load_missing_file(tmp_path: Path):
    with pytest.raises(WorkflowNotFound):
        load_definition(tmp_path / "nope.yaml")


# --- registry -----------------------------------------------------------------------


def _write(directory: Path, filename: str, name: str, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(MINIMAL.replace("name: w", f"name: {name}") + extra)
    return path


def test_registry_get_all_errors(tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    _write(one, "a.yaml", "alpha")
    _write(one, "b.yml", "beta")
    _write(two, "c.yaml", "gamma")
    (two / "notes.txt").write_text("not a workflow")
    (two / "broken.yaml").write_text("name: broken\nstates: {initial: nope}\n")
    registry = Registry([one, two, tmp_path / "missing"])
    assert [d.name for d in registry.all()] == ["alpha", "beta", "gamma"]
    assert registry.get("beta").path == one / "b.yml"
    with pytest.raises(InvalidDefinition, match="initial state 'nope' does not exist"):
        registry.get("broken")
    assert [e.errors[0]["file"] for e in registry.errors()] == [str(two / "broken.yaml")]
    with pytest.raises(WorkflowNotFound) as info:
        registry.get("delta")
    assert str(one) in str(info.value)
    assert str(two) in str(info.value)


def test_registry_duplicate_names(tmp_path: Path):
    first = _write(tmp_path / "one", "x.yaml", "same")
    second = _write(tmp_path / "two", "y.yaml", "same")
    _write(tmp_path / "two", "z.yaml", "other")
    registry = Registry([tmp_path / "one", tmp_path / "two"])
    with pytest.raises(InvalidDefinition) as info:
        registry.get("same")
    assert str(first) in str(info.value)
    assert str(second) in str(info.value)
    assert [d.name for d in registry.all()] == ["other"]
    assert len(registry.errors()) == 1


def test_registry_entries_list_valid_and_invalid_workflows(tmp_path: Path):
    _write(tmp_path, "a.yaml", "alpha")
    (tmp_path / "broken.yaml").write_text("name: broken\nstates: {initial: nope}\n")
    (tmp_path / "unparsable.yaml").write_text("name: [unclosed\nstates: {\n")
    (tmp_path / "nameless.yaml").write_text("states: {initial: a}\n")
    registry = Registry([tmp_path])
    entries = {e.name: e for e in registry.entries()}
    assert sorted(entries) == ["alpha", "broken", "nameless", "unparsable"]
    assert entries["alpha"].valid and entries["alpha"].errors == []
    assert entries["alpha"].definition is registry.get("alpha")
    broken = entries["broken"]
    assert not broken.valid and broken.definition is None
    assert broken.path == tmp_path / "broken.yaml"
    assert any("initial state 'nope'" in e["message"] for e in broken.errors)
    assert any("initial state 'nope'" in line for line in broken.problems())
    assert (broken.version, broken.sha256, broken.inputs) == ("", "", [])
    # YAML that does not parse, or no name: the file's stem is the workflow's name.
    assert not entries["unparsable"].valid and entries["unparsable"].errors[0]["line"] > 0
    assert not entries["nameless"].valid
    for name in ("broken", "unparsable", "nameless"):
        with pytest.raises(InvalidDefinition):
            registry.get(name)
    assert registry.entry("broken") == broken
    with pytest.raises(WorkflowNotFound):
        registry.entry("delta")
    assert [d.name for d in registry.all()] == ["alpha"]
    assert len(registry.errors()) == 3


def test_an_invalid_file_never_shadows_a_valid_workflow_named_like_its_stem(tmp_path: Path):
    # gamma.yaml declares (an invalid) "other"; a valid workflow is called "gamma".
    (tmp_path / "gamma.yaml").write_text("name: other\nstates: {initial: nope}\n")
    _write(tmp_path, "g.yaml", "gamma")
    registry = Registry([tmp_path])
    assert registry.get("gamma").path == tmp_path / "g.yaml"
    with pytest.raises(InvalidDefinition):
        registry.get("other")


def test_an_invalid_and_a_valid_file_claiming_one_name(tmp_path: Path):
    valid = _write(tmp_path / "one", "x.yaml", "same")
    (tmp_path / "two").mkdir()
    invalid = tmp_path / "two" / "y.yaml"
    invalid.write_text("name: same\nstates: {initial: nope}\n")
    registry = Registry([tmp_path / "one", tmp_path / "two"])
    entry = registry.entry("same")
    assert entry.duplicate and not entry.valid
    assert entry.paths == (valid, invalid)
    messages = [e["message"] for e in entry.errors]
    assert any("also defined in" in m for m in messages)
    assert any("initial state 'nope'" in m for m in messages)  # its own errors, too
    with pytest.raises(InvalidDefinition, match="defined more than once"):
        registry.get("same")


def test_registry_caches_by_mtime_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = _write(tmp_path, "a.yaml", "alpha")
    registry_module.clear_cache()
    calls: list[Path] = []
    real = registry_module.load_definition

    def counting(p: Path) -> Any:
        calls.append(p)
        return real(p)

    monkeypatch.setattr(registry_module, "load_definition", counting)
    registry = Registry([tmp_path])
    first = registry.get("alpha")
    assert Registry([tmp_path]).get("alpha") is first
    assert len(calls) == 1
    path.write_text(MINIMAL.replace("name: w", "name: alpha").replace("echo hi", "echo changed"))
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert registry.get("alpha").states["a"].command == "echo changed"
    assert len(calls) == 2


def test_get_registry_reads_settings_each_time(settings: Any, tmp_path: Path):
    _write(tmp_path / "a", "a.yaml", "from-a")
    _write(tmp_path / "b", "b.yaml", "from-b")
    settings.WFSTATE = {**settings.WFSTATE, "WORKFLOW_DIRS": [tmp_path / "a"]}
    assert "from-a" in [d.name for d in get_registry().all()]
    settings.WFSTATE = {**settings.WFSTATE, "WORKFLOW_DIRS": [tmp_path / "b"]}
    names = [d.name for d in get_registry().all()]
    assert "from-b" in names
    assert "from-a" not in names


def test_get_registry_includes_app_workflows_dirs(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from django.apps import apps

    app_config = apps.get_app_config("wfstate")
    app_dir = tmp_path / "app"
    _write(app_dir / "workflows", "x.yaml", "from-app")
    monkeypatch.setattr(app_config, "path", str(app_dir))
    settings.WFSTATE = {**settings.WFSTATE, "WORKFLOW_DIRS": []}
    assert "from-app" in [d.name for d in get_registry().all()]
    assert app_dir / "workflows" in get_registry().dirs


def test_resolve_definition(settings: Any, tmp_path: Path):
    path = _write(tmp_path, "a.yaml", "alpha")
    settings.WFSTATE = {**settings.WFSTATE, "WORKFLOW_DIRS": [tmp_path]}
    assert resolve_definition(str(path)).name == "alpha"
    assert resolve_definition("alpha").path == path
    with pytest.raises(WorkflowNotFound):
        resolve_definition(str(tmp_path / "missing.yaml"))
    with pytest.raises(WorkflowNotFound):
        resolve_definition("missing")
