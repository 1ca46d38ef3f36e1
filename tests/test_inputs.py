"""Inputs: types, defaults, required, validation rules, CLI coercion, JSON Schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from django.test import Client

from tests.helpers import API, call
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


# --- integers beyond 64 bits (a run's state is JSON written by orjson) -------------------

BIG = [2**64, 2**63, -(2**63) - 1, 10**30]


@pytest.mark.parametrize("value", BIG)
def test_integers_beyond_64_bits_are_refused_naming_the_input(
    definition: WorkflowDefinition, value: int
):
    text = TEXT.replace("validation: {min: 1, max: 16}", "validation: {}").replace(
        "validation: {min: 0, max: 1}", "validation: {}"
    )
    unbounded = loads_definition(text)
    for name, raw in (("jobs", value), ("ratio", value), ("jobs", float(value))):
        with pytest.raises(InvalidInputs) as info:
            validate_inputs(unbounded, {"tag": "v1", name: raw})
        assert list(info.value.errors) == [name]
        assert "64-bit integer" in info.value.errors[name][0]
    with pytest.raises(InvalidInputs, match="64-bit"):
        validate_inputs(unbounded, {"tag": "v1", "jobs": str(value)}, coerce_strings=True)
    edge = validate_inputs(unbounded, {"tag": "v1", "jobs": 2**63 - 1, "ratio": -(2**63)})
    assert (edge["jobs"], edge["ratio"]) == (2**63 - 1, -(2**63))
    # a number spelled in digits is read exactly, not through a float
    exact = validate_inputs(
        unbounded, {"tag": "v1", "ratio": "9007199254740993"}, coerce_strings=True
    )
    assert exact["ratio"] == 9007199254740993


def test_a_huge_integer_is_named_without_printing_all_its_digits(definition: WorkflowDefinition):
    unbounded = loads_definition(TEXT.replace("validation: {min: 1, max: 16}", "validation: {}"))
    for value, shown in ((10**200, "(201 digits)"), (10**5000, "thousands of digits")):
        # (Python refuses to print an integer of over 4300 digits at all.)
        with pytest.raises(InvalidInputs) as info:
            validate_inputs(unbounded, {"tag": "v1", "jobs": value})
        message = info.value.errors["jobs"][0]
        assert shown in message and len(message) < 200


BIGINT_WORKFLOW = """\
name: bigint
inputs:
  - {name: n, type: integer, default: 1}
  - {name: x, type: number, default: 1}
states:
  initial: a
  a: {type: step, command: "printf '%s' {{ inputs.n }}", on_success: done}
  done: {type: terminal, status: success}
"""


@pytest.fixture
def bigint_workflow(settings: Any, tmp_path: Path) -> None:
    workflows = tmp_path / "workflows"
    workflows.mkdir()
    (workflows / "bigint.yaml").write_text(BIGINT_WORKFLOW)
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "INDEX_ON_WRITE": False,
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], workflows],
    }


def _invalid_inputs(code: int, out: str) -> dict[str, Any]:
    assert code == 1, out
    error = orjson.loads(out)["error"]
    assert error["code"] == "invalid_inputs"
    return error


@pytest.mark.usefixtures("bigint_workflow")
@pytest.mark.parametrize("value", [str(2**64), str(-(2**63) - 1), "1" * 40])
def test_big_integers_on_the_command_line_are_invalid_inputs(tmp_path: Path, value: str):
    for name in ("n", "x"):
        error = _invalid_inputs(
            *call("run_workflow", "bigint", "--input", f"{name}={value}", "--json")[:2]
        )
        assert set(error["errors"]) == {name}
    for suffix in ("json", "yaml"):
        path = tmp_path / f"inputs.{suffix}"
        path.write_text(f'{{"n": {value}}}')
        error = _invalid_inputs(
            *call("run_workflow", "bigint", "--inputs-file", str(path), "--json")[:2]
        )
        assert set(error["errors"]) == {"n"}
    code, out, _ = call("run_workflow", "bigint", "--json")
    assert code == 0, out
    workflow_id = orjson.loads(out)["workflow_id"]
    error = _invalid_inputs(
        *call(
            "resume_workflow", workflow_id, "--from", "previous", "--input", f"n={value}", "--json"
        )[:2]
    )
    assert set(error["errors"]) == {"n"}


@pytest.mark.django_db
@pytest.mark.usefixtures("bigint_workflow")
def test_big_integers_over_the_api_are_400_invalid_inputs(admin_client: Client):
    # (A number input is a JSON double to the API's parser: 2**64 arrives as a float.)
    for inputs in ({"n": 2**64}, {"n": 2**63}, {"n": -(2**63) - 1}, {"n": 10**30}):
        response = admin_client.post(
            API + "runs/",
            orjson.dumps({"workflow_name": "bigint", "inputs": {}}).replace(
                b"{}", _big_json(inputs)
            ),
            content_type="application/json",
        )
        assert response.status_code == 400, response.content
        reply = response.json()
        assert reply["code"] == "invalid_inputs", reply
        assert set(reply["errors"]["inputs"]) == set(inputs)


def _big_json(inputs: dict[str, int]) -> bytes:
    """orjson cannot write these integers: spell the object by hand."""
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in inputs.items()) + "}").encode()
