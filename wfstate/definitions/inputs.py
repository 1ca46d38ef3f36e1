"""Workflow inputs: validation, CLI coercion and the JSON Schema served by the API."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from wfstate.definitions.model import InputDef, WorkflowDefinition
from wfstate.exceptions import InvalidInputs

__all__ = [
    "check_value",
    "coerce_string",
    "input_json_schema",
    "parse_input_pairs",
    "validate_inputs",
]

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
# A run's state is JSON written by orjson, which stores integers of 64 bits: an integer
# input outside the signed range is refused here, with its name, rather than failing
# later as a 500 or a traceback when the first checkpoint is written.
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}


def coerce_string(definition: InputDef, value: str) -> Any:
    """A command-line string -> the input's declared type.

    Raises:
        ValueError: the string does not spell a value of that type.
    """
    text = value.strip()
    if definition.type == "integer":
        try:
            return int(text, 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
    if definition.type == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"expected a finite number, got {value!r}")
        # Digits alone are an exact integer (float() would round a big one).
        return int(text, 10) if re.fullmatch(r"[+-]?\d+", text) else number
    if definition.type == "boolean":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false/yes/no/1/0), got {value!r}")
    return value


def _show_int(value: int) -> str:
    """A big integer, shortened (Python refuses to print one of over 4300 digits)."""
    try:
        text = str(value)
    except ValueError:
        return "an integer of thousands of digits"
    return text if len(text) <= 40 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


def _type_problem(definition: InputDef, value: Any) -> str | None:
    kind = definition.type
    if kind == "string" and not isinstance(value, str):
        return f"expected a string, got {type(value).__name__} {value!r}"
    if kind == "boolean" and not isinstance(value, bool):
        return f"expected a boolean, got {type(value).__name__} {value!r}"
    if kind == "integer" and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not value.is_integer())
    ):
        return f"expected an integer, got {type(value).__name__} {value!r}"
    if kind == "number" and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        return f"expected a number, got {type(value).__name__} {value!r}"
    if kind == "integer" and isinstance(value, float) and abs(value) >= 2**63:
        # A JSON parser gives a float for an integer too big for 64 bits: it was rounded.
        return (
            f"{value!r} is outside the range of a 64-bit integer ({INT_MIN} to {INT_MAX}), "
            "the largest a run's state can store"
        )
    if kind in ("integer", "number") and isinstance(value, int) and not INT_MIN <= value <= INT_MAX:
        return (
            f"{_show_int(value)} is outside the range of a 64-bit integer "
            f"({INT_MIN} to {INT_MAX}), the largest a run's state can store"
        )
    return None


def check_value(definition: InputDef, value: Any) -> list[str]:
    """Problems of a typed value against the input's type and ``validation``; [] if none."""
    problem = _type_problem(definition, value)
    if problem:
        return [problem]
    rules = definition.validation
    problems: list[str] = []
    enum = rules.get("enum")
    if enum is not None and value not in enum:
        problems.append(f"must be one of {', '.join(repr(v) for v in enum)}; got {value!r}")
    pattern = rules.get("pattern")
    if pattern is not None and isinstance(value, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:
            matched = True  # an invalid pattern is a definition error, reported at load
        if not matched:
            problems.append(f"must match the pattern {pattern!r}; got {value!r}")
    low, high = rules.get("min"), rules.get("max")
    if isinstance(value, str):
        if low is not None and len(value) < low:
            problems.append(f"must be at least {low} characters long; got {len(value)}")
        if high is not None and len(value) > high:
            problems.append(f"must be at most {high} characters long; got {len(value)}")
    elif not isinstance(value, bool):
        if low is not None and value < low:
            problems.append(f"must be at least {low}; got {value!r}")
        if high is not None and value > high:
            problems.append(f"must be at most {high}; got {value!r}")
    return problems


def validate_inputs(
    definition: WorkflowDefinition,
    raw: Mapping[str, Any],
    *,
    coerce_strings: bool = False,
) -> dict[str, Any]:
    """Check ``raw`` against the declared inputs and return the values a run starts with.

    Defaults fill missing inputs; an optional input with no default is ``None``.
    With ``coerce_strings`` (the command line), strings are converted to the declared
    type (booleans from true/false/yes/no/1/0).

    Raises:
        InvalidInputs: with every problem, ``errors`` mapping input names to messages.
    """
    errors: dict[str, list[str]] = {}
    declared = {i.name: i for i in definition.inputs}
    for name in raw:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            errors.setdefault(str(name), []).append(
                f"unknown input (the workflow '{definition.name}' declares: {known})"
            )
    values: dict[str, Any] = {}
    for name, spec in declared.items():
        value = raw.get(name)
        if value is None:
            if spec.has_default:
                values[name] = spec.default
            elif spec.required:
                errors.setdefault(name, []).append("this input is required")
            else:
                values[name] = None
            continue
        if coerce_strings and isinstance(value, str) and spec.type != "string":
            try:
                value = coerce_string(spec, value)
            except ValueError as exc:
                errors.setdefault(name, []).append(_hide(spec, value, str(exc)))
                continue
        if (
            spec.type == "integer"
            and isinstance(value, float)
            and value.is_integer()
            and abs(value) < 2**63
        ):
            value = int(value)
        problems = check_value(spec, value)
        if problems:
            errors.setdefault(name, []).extend(_hide(spec, value, p) for p in problems)
        else:
            values[name] = value
    if errors:
        lines = [f"  {name}: {message}" for name, msgs in errors.items() for message in msgs]
        raise InvalidInputs(
            f"invalid inputs for workflow '{definition.name}':\n" + "\n".join(lines),
            errors=errors,
        )
    return values


def parse_input_pairs(pairs: list[str]) -> dict[str, str]:
    """``["tag=v1", "note=a=b"]`` -> ``{"tag": "v1", "note": "a=b"}`` (``--input k=v``).

    Raises:
        InvalidInputs: a pair has no ``=`` or an empty name.
    """
    values: dict[str, str] = {}
    errors: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            errors.setdefault(pair, []).append(f"expected NAME=VALUE, got {pair!r}")
            continue
        values[name] = value
    if errors:
        lines = [f"  {message}" for msgs in errors.values() for message in msgs]
        raise InvalidInputs("invalid --input:\n" + "\n".join(lines), errors=errors)
    return values


def input_json_schema(definition: WorkflowDefinition) -> dict[str, Any]:
    """A JSON Schema (Draft 2020-12) of the workflow's inputs object, for the API."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for spec in definition.inputs:
        prop: dict[str, Any] = {"type": _JSON_TYPES[spec.type]}
        if spec.description:
            prop["description"] = spec.description
        if spec.has_default:
            prop["default"] = spec.default
        rules = spec.validation
        if "enum" in rules:
            prop["enum"] = list(rules["enum"])
        if "pattern" in rules and spec.type == "string":
            prop["pattern"] = rules["pattern"]
        if spec.type == "string":
            if "min" in rules:
                prop["minLength"] = rules["min"]
            if "max" in rules:
                prop["maxLength"] = rules["max"]
        elif spec.type in ("integer", "number"):
            if "min" in rules:
                prop["minimum"] = rules["min"]
            if "max" in rules:
                prop["maximum"] = rules["max"]
        properties[spec.name] = prop
        if spec.required and not spec.has_default:
            required.append(spec.name)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"inputs of workflow {definition.name}",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _hide(spec: InputDef, value: Any, message: str) -> str:
    """A message about a ``secret: true`` input never echoes its value."""
    if not spec.secret:
        return message
    return message.replace(repr(value), "********").replace(str(value), "********")
