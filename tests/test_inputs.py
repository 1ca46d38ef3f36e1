"""Inputs: types, defaults, required, validation rules, CLI coercion, JSON Schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from wfstate.definitions import (
    WorkflowDefinition,
    input_json_schema,
    loads_definition,
    parse_input_pairs,
    validate_inputs,
)
from wfstate.exceptions import InvalidInputs

TEXT = """\
name: w
inputs:
  - {name: tag, type: string, required: true, validation: {pattern: "^v[0-9]+", min: 2, max: 10}}
  - {name: env, type: string, default: staging, validation: {enum: [staging, prod]}}
  - {name: jobs, type: integer, default: 2, validation: {min: 1, max: 16}}
  - {name: ratio, type: number, validation: {min: 0, max: 1}}
  - {name: dry_run, type: boolean, default: false}
  - {name: note, description: free text}
states:
  initial: a
  a: {type: step, command: echo, on_success: done}
  done: {type: terminal}
"""


@pytest.fixture(scope="module")
def definition() -> WorkflowDefinition:
    return loads_definition(TEXT)


def test_defaults_and_optional_inputs(definition: WorkflowDefinition):
    assert validate_inputs(definition, {"tag": "v1"}) == {
        "tag": "v1",
        "env": "staging",
        "jobs": 2,
        "ratio": None,
        "dry_run": False,
        "note": None,
    }


def test_typed_values_pass(definition: WorkflowDefinition):
    values = validate_inputs(
        definition, {"tag": "v12", "env": "prod", "jobs": 16, "ratio": 0.5, "dry_run": True}
    )
    assert values["jobs"] == 16
    assert values["ratio"] == 0.5
    assert values["dry_run"] is True
    assert validate_inputs(definition, {"tag": "v1", "jobs": 3.0})["jobs"] == 3
    assert validate_inputs(definition, {"tag": "v1", "ratio": 1})["ratio"] == 1


def test_all_errors_at_once(definition: WorkflowDefinition):
    with pytest.raises(InvalidInputs) as info:
        validate_inputs(
            definition,
            {"env": "qa", "jobs": 0, "ratio": "half", "dry_run": "yes", "colour": "red"},
        )
    errors = info.value.errors
    assert set(errors) == {"tag", "env", "jobs", "ratio", "dry_run", "colour"}
    assert errors["tag"] == ["this input is required"]
    assert "must be one of 'staging', 'prod'" in errors["env"][0]
    assert errors["jobs"] == ["must be at least 1; got 0"]
    assert "expected a number" in errors["ratio"][0]
    assert "expected a boolean" in errors["dry_run"][0]  # no coercion without coerce_strings
    assert "unknown input" in errors["colour"][0]
    message = str(info.value)
    for name in errors:
        assert f"{name}: " in message
    assert info.value.exit_code == 1


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("1.0", "must match the pattern"),
        ("v", "at least 2 characters"),
        ("v123456789012", "at most 10 characters"),
        (5, "expected a string"),
        (True, "expected a string"),
    ],
)
def test_string_rules(definition: WorkflowDefinition, value: Any, problem: str):
    with pytest.raises(InvalidInputs) as info:
        validate_inputs(definition, {"tag": value})
    assert any(problem in m for m in info.value.errors["tag"])


@pytest.mark.parametrize("value", [True, 1.5, "3", 17, -1])
def test_integer_rules(definition: WorkflowDefinition, value: Any):
    with pytest.raises(InvalidInputs) as info:
        validate_inputs(definition, {"tag": "v1", "jobs": value})
    assert list(info.value.errors) == ["jobs"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"jobs": "4"}, {"jobs": 4}),
        ({"jobs": " 7 "}, {"jobs": 7}),
        ({"ratio": "0.25"}, {"ratio": 0.25}),
        ({"ratio": "1"}, {"ratio": 1}),
        ({"dry_run": "true"}, {"dry_run": True}),
        ({"dry_run": "Yes"}, {"dry_run": True}),
        ({"dry_run": "1"}, {"dry_run": True}),
        ({"dry_run": "false"}, {"dry_run": False}),
        ({"dry_run": "no"}, {"dry_run": False}),
        ({"dry_run": "0"}, {"dry_run": False}),
        ({"note": "007"}, {"note": "007"}),  # strings stay strings
    ],
)
def test_coerce_strings(
    definition: WorkflowDefinition, raw: dict[str, str], expected: dict[str, Any]
):
    values = validate_inputs(definition, {"tag": "v1", **raw}, coerce_strings=True)
    for name, value in expected.items():
        assert values[name] == value
        assert type(values[name]) is type(value)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"jobs": "four"}, "expected an integer"),
        ({"jobs": "1.5"}, "expected an integer"),
        ({"ratio": "nan"}, "finite"),
        ({"ratio": "x"}, "expected a number"),
        ({"dry_run": "maybe"}, "expected a boolean"),
        ({"jobs": "99"}, "at most 16"),
    ],
)
def test_coerce_strings_errors(definition: WorkflowDefinition, raw: dict[str, str], problem: str):
    with pytest.raises(InvalidInputs) as info:
        validate_inputs(definition, {"tag": "v1", **raw}, coerce_strings=True)
    (name,) = raw
    assert problem in info.value.errors[name][0]


def test_parse_input_pairs():
    assert parse_input_pairs(["tag=v1", "note=a=b", "empty=", " x =y"]) == {
        "tag": "v1",
        "note": "a=b",
        "empty": "",
        "x": "y",
    }
    with pytest.raises(InvalidInputs) as info:
        parse_input_pairs(["ok=1", "novalue", "=x"])
    assert set(info.value.errors) == {"novalue", "=x"}
    assert "expected NAME=VALUE" in str(info.value)


def test_input_json_schema(definition: WorkflowDefinition):
    schema = input_json_schema(definition)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["tag"]
    assert schema["properties"]["tag"] == {
        "type": "string",
        "pattern": "^v[0-9]+",
        "minLength": 2,
        "maxLength": 10,
    }
    assert schema["properties"]["jobs"] == {
        "type": "integer",
        "default": 2,
        "minimum": 1,
        "maximum": 16,
    }
    assert schema["properties"]["env"]["enum"] == ["staging", "prod"]
    assert schema["properties"]["note"] == {"type": "string", "description": "free text"}
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"tag": "v1", "jobs": 3})
    assert not validator.is_valid({"tag": "v1", "colour": "red"})
    assert not validator.is_valid({"jobs": 3})


def test_workflow_without_inputs():
    d = loads_definition("name: w\nstates:\n  initial: d\n  d: {type: terminal}\n")
    assert validate_inputs(d, {}) == {}
    with pytest.raises(InvalidInputs, match="declares: none"):
        validate_inputs(d, {"x": 1})
