"""Loading and validating workflow definitions (docs/workflows.md).

Three passes, and every error of every pass is collected before anything is raised, so a
user fixes a file in one round trip:

1. YAML, with the line of every key kept (:mod:`wfstate.definitions._yaml`);
2. the published JSON Schema (``wfstate/schema/workflow.schema.json``, Draft 2020-12);
3. building the :class:`WorkflowDefinition` and semantic checks: unknown targets,
   unreachable states, no terminal, states with no path to a terminal, parallel
   branches that are terminals or parallel blocks, command/call, durations, template
   syntax (templates are compiled here, not when the step runs).

Keys wfstate does not use are never errors and never silently dropped: known awf keys
and unknown keys (typos) become ``WorkflowDefinition.warnings``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, cast

import jsonschema

from wfstate.definitions import awf, templates
from wfstate.definitions import calls as call_defs
from wfstate.definitions._yaml import SourceMap, YAMLSyntaxError, load_yaml, path_str
from wfstate.definitions.graphcheck import check_graph
from wfstate.definitions.loops import LOOP_TYPES, build_loop
from wfstate.definitions.model import (
    InputDef,
    RetryPolicy,
    StateDef,
    Transition,
    WorkflowDefinition,
)
from wfstate.exceptions import InvalidDefinition, TemplateError
from wfstate.records import DefinitionProblem

__all__ = [
    "definition_from_dict",
    "load_definition",
    "loads_definition",
    "parse_duration",
    "workflow_schema",
]

Path_ = tuple[Any, ...]

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``5`` / ``2.5`` / ``"300ms"`` / ``"30s"`` / ``"5m"`` / ``"1h"`` -> seconds.

    Raises:
        ValueError: not a non-negative number or such a string.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: must be a non-negative number")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(
        f"invalid duration {value!r}: use seconds (a number) or a string like 300ms, 30s, 5m, 1h"
    )


@functools.cache
def workflow_schema() -> dict[str, Any]:
    """The published JSON Schema of workflow files (package data)."""
    text = resources.files("wfstate").joinpath("schema/workflow.schema.json").read_text("utf-8")
    return cast(dict[str, Any], json.loads(text))


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = workflow_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


class _Collector:
    """Errors and warnings with the file, line and state they belong to."""

    def __init__(self, file: str, source: SourceMap | None) -> None:
        self.file = file
        self.source = source
        self.errors: list[DefinitionProblem] = []
        self.warnings: list[str] = []
        self.error_paths: set[Path_] = set()

    def _locate(self, path: Path_) -> tuple[int, str | None]:
        line = self.source.line(path) if self.source else 0
        state = None
        if len(path) >= 2 and path[0] == "states" and path[1] != "initial":
            state = str(path[1])
        return line, state

    def _prefix(self, line: int, state: str | None) -> str:
        where = f"{self.file}:{line}" if line else self.file
        return f"{where}: state '{state}'" if state else where

    def error(self, path: Path_, message: str) -> None:
        line, state = self._locate(path)
        self.error_paths.add(tuple(path))
        entry: DefinitionProblem = {
            "file": self.file,
            "line": line,
            "state": state,
            "message": message,
        }
        if entry not in self.errors:
            self.errors.append(entry)

    def has_error(self, path: Path_) -> bool:
        """An error was reported at ``path`` or inside it (so don't report it twice)."""
        n = len(path)
        return any(p[:n] == tuple(path) for p in self.error_paths)

    def warn(self, path: Path_, message: str) -> None:
        line, state = self._locate(path)
        text = f"{self._prefix(line, state)}: {message}"
        if text not in self.warnings:
            self.warnings.append(text)

    def raise_if_errors(self, name: str | None) -> None:
        if not self.errors:
            return
        self.errors.sort(key=lambda e: (e["line"], e["state"] or "", e["message"]))
        lines = [f"{self._prefix(e['line'], e['state'])}: {e['message']}" for e in self.errors]
        count = len(lines)
        header = f"invalid workflow definition {self.file} ({count} error{'s' * (count != 1)}):"
        raise InvalidDefinition(
            "\n".join([header, *(f"  {line}" for line in lines)]),
            errors=self.errors,
            warnings=list(self.warnings),
            path=self.file,
            workflow_name=name,
        )


# --- pass 2: JSON Schema ----------------------------------------------------------------


def _schema_message(error: jsonschema.ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    path = list(error.absolute_path)
    if schema.get("title") == "duration" or error.validator == "anyOf":
        return (
            f"invalid duration {error.instance!r}: use seconds (a number) or a string "
            "like 300ms, 30s, 5m, 1h"
        )
    if error.validator == "enum" and len(path) == 3 and path[0] == "states" and path[2] == "type":
        value = error.instance
        if isinstance(value, str) and value in awf.AWF_STATE_TYPES:
            return f"state type {value!r} is not supported: {awf.AWF_STATE_TYPES[value]}"
        known = ", ".join(awf.STATE_KEYS)
        return f"unknown state type {value!r}: expected one of {known}"
    if error.validator == "required":
        return error.message.replace("is a required property", "is required")
    where = path_str(path[2:] if path[:1] == ["states"] and len(path) > 2 else path)
    return f"{where}: {error.message}" if where else error.message


def _schema_errors(data: Any, out: _Collector) -> None:
    for error in _validator().iter_errors(data):
        if "propertyNames" in error.schema_path:
            path = (*error.absolute_path, error.instance)
            out.error(path, f"invalid state name {error.instance!r}: use letters, digits, _ and -")
            continue
        # if/then failures repeat their sub-errors; report the leaves only.
        for leaf in [error] if not error.context else _leaves(error):
            out.error(tuple(leaf.absolute_path), _schema_message(leaf))


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if error.validator == "anyOf":  # the duration: one message for the whole value
        return [error]
    out: list[jsonschema.ValidationError] = []
    for sub in error.context or ():
        out.extend(_leaves(sub) if sub.context else [sub])
    return out or [error]


# --- pass 3: building ----------------------------------------------------------------------


def _warn_keys(
    out: _Collector,
    path: Path_,
    keys: Iterable[Any],
    known: frozenset[str],
    awf_known: frozenset[str],
    *,
    elsewhere: frozenset[str] = frozenset(),
    kind: str = "",
    prefix: str = "",
    subject: str = "",
) -> None:
    for key in keys:
        if key in known:
            continue
        name = f"{prefix}{key}"
        lead = f"{subject}: " if subject else ""
        if key in awf_known:
            out.warn((*path, key), f"{lead}key '{name}' is not supported and is ignored")
        elif key in elsewhere:
            out.warn(
                (*path, key), f"{lead}key '{name}' does not apply to a {kind} state and is ignored"
            )
        else:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            out.warn((*path, key), f"{lead}unknown key '{name}' is ignored{hint}")


def _duration(out: _Collector, path: Path_, value: Any) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        if not out.has_error(path):
            out.error(path, str(exc))
        return None


def _template(out: _Collector, path: Path_, value: Any, check: Callable[[str], None]) -> Any:
    """Normalise awf spellings and compile; a syntax error is reported at ``path``."""
    if not isinstance(value, str):
        return value
    text = awf.normalise_template(value)
    try:
        check(text)
    except TemplateError as exc:
        out.error(path, str(exc))
    return text


def _template_value(out: _Collector, path: Path_, value: Any) -> Any:
    if isinstance(value, str):
        return _template(out, path, value, templates.check_value)
    if isinstance(value, Mapping):
        return {k: _template_value(out, (*path, k), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_template_value(out, (*path, i), v) for i, v in enumerate(value)]
    return value


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _build_input(out: _Collector, index: int, raw: Any) -> InputDef | None:
    path: Path_ = ("inputs", index)
    if not isinstance(raw, Mapping) or out.has_error(path):
        return None
    subject = f"input '{raw['name']}'"
    _warn_keys(out, path, raw.keys(), awf.INPUT_KEYS, awf.AWF_INPUT_KEYS, subject=subject)
    validation = raw.get("validation") or {}
    if isinstance(validation, Mapping):
        _warn_keys(
            out,
            (*path, "validation"),
            validation.keys(),
            awf.VALIDATION_KEYS,
            awf.AWF_VALIDATION_KEYS,
            prefix="validation.",
            subject=subject,
        )
        validation = {k: v for k, v in validation.items() if k in awf.VALIDATION_KEYS}
        pattern = validation.get("pattern")
        if isinstance(pattern, str):
            try:
                re.compile(pattern)
            except re.error as exc:
                out.error((*path, "validation", "pattern"), f"invalid pattern {pattern!r}: {exc}")
    definition = InputDef(
        name=str(raw["name"]),
        type=raw.get("type", "string"),
        required=bool(raw.get("required", False)),
        default=raw.get("default"),
        has_default="default" in raw and raw["default"] is not None,
        description=str(raw.get("description") or ""),
        validation=dict(validation) if isinstance(validation, Mapping) else {},
        secret=raw.get("secret") is True,
    )
    if definition.has_default:
        from wfstate.definitions.inputs import check_value

        problems = check_value(definition, definition.default)
        for problem in problems:
            out.error((*path, "default"), f"default of input '{definition.name}': {problem}")
    return definition


def _build_retry(out: _Collector, path: Path_, raw: Any) -> RetryPolicy | None:
    if not isinstance(raw, Mapping) or out.has_error(path):
        return None
    _warn_keys(out, path, raw.keys(), awf.RETRY_KEYS, frozenset(), prefix="retry.")
    initial = _duration(out, (*path, "initial_delay"), raw.get("initial_delay", 0))
    max_delay = _duration(out, (*path, "max_delay"), raw.get("max_delay"))
    codes = raw.get("retryable_exit_codes") or ()
    # YAML's .inf and .nan are numbers to the schema, but no delay can be made of them.
    for key, value in (
        ("initial_delay", initial),
        ("max_delay", max_delay),
        ("multiplier", raw.get("multiplier")),
        ("jitter", raw.get("jitter")),
    ):
        if isinstance(value, float) and not math.isfinite(value):
            out.error((*path, key), f"retry.{key} must be a finite number, not {value}")
    return RetryPolicy(
        max_attempts=int(raw.get("max_attempts", 1)),
        initial_delay=initial or 0.0,
        max_delay=max_delay,
        backoff=raw.get("backoff", "constant"),
        multiplier=float(raw.get("multiplier", 2.0)),
        jitter=float(raw.get("jitter", 0.0)),
        retryable_exit_codes=tuple(int(c) for c in codes),
    )


def _state_type(out: _Collector, path: Path_, raw: Mapping[str, Any]) -> str | None:
    kind = raw.get("type")
    if kind is None:
        if "parallel" in raw:
            return "parallel"
        if "command" in raw or "call" in raw:
            return "step"
        out.error(path, "missing 'type' (step, parallel or terminal)")
        return None
    if kind not in awf.STATE_KEYS:
        return None  # reported by the schema
    return str(kind)


def _build_state(out: _Collector, name: str, raw: Any) -> StateDef | None:
    """Build what can be built; fields the schema rejected are left at their defaults
    (their errors are already reported), so the graph checks still see the routes."""
    path: Path_ = ("states", name)
    if not isinstance(raw, Mapping):
        return None
    kind = _state_type(out, path, raw)
    if kind is None:
        return None
    _warn_keys(
        out,
        path,
        raw.keys(),
        awf.STATE_KEYS[kind],
        awf.AWF_STATE_KEYS,
        elsewhere=awf.ALL_STATE_KEYS,
        kind=kind,
    )

    def get(key: str, default: Any = None) -> Any:
        if out.has_error((*path, key)):
            return default
        value = raw.get(key)
        return default if value is None else value

    fields: dict[str, Any] = {
        "name": name,
        "type": kind,
        "line": out.source.line(path) if out.source else 0,
        "description": str(get("description", "")),
    }
    if kind in LOOP_TYPES:
        return build_loop(out, path, raw, get, fields)
    if kind in ("step", "parallel", "call_workflow", "operation", "wait", "sleep"):
        fields["on_success"] = get("on_success")
        fields["on_failure"] = get("on_failure")
        fields["transitions"] = tuple(_build_transitions(out, path, get("transitions", [])))
        call_defs.inline_failure(out, path, raw, fields)
    if kind == "step":
        _build_step(out, path, raw, get, fields)
    elif kind == "call_workflow":
        call_defs.build_call_workflow(out, path, raw, get, fields, _template_value, _duration)
    elif kind == "operation":
        call_defs.build_operation(out, path, raw, get, fields, _template_value)
        fields["timeout"] = _duration(out, (*path, "timeout"), raw.get("timeout"))
        if get("retry") is not None:
            fields["retry"] = _build_retry(out, (*path, "retry"), get("retry"))
        fields["continue_on_error"] = bool(get("continue_on_error", False))
    elif kind in ("wait", "sleep"):
        from wfstate.definitions.waits import build_wait

        build_wait(out, path, raw, get, fields)
    elif kind == "parallel":
        fields["parallel"] = tuple(get("parallel", ()))
        fields["strategy"] = get("strategy", "all_succeed")
        fields["max_concurrent"] = get("max_concurrent")
    else:
        fields["status"] = get("status", "success")
        message = get("message")
        if message is not None:
            fields["message"] = _template(
                out, (*path, "message"), str(message), templates.check_text
            )
    return StateDef(**fields)


def _build_transitions(out: _Collector, path: Path_, raw: Any) -> list[Transition]:
    transitions: list[Transition] = []
    for i, t in enumerate(raw):
        tpath: Path_ = (*path, "transitions", i)
        if out.has_error(tpath) or not isinstance(t, Mapping):
            continue
        _warn_keys(out, tpath, t.keys(), awf.TRANSITION_KEYS, frozenset(), prefix="transitions.")
        when = t.get("when")
        if when is not None:
            when = awf.normalise_expression(when)
            try:
                templates.check_expression(when)
            except TemplateError as exc:
                out.error((*tpath, "when"), str(exc))
        transitions.append(Transition(goto=t["goto"], when=when))
    return transitions


def _build_step(
    out: _Collector,
    path: Path_,
    raw: Mapping[str, Any],
    get: Callable[..., Any],
    fields: dict[str, Any],
) -> None:
    script = call_defs.script_file_command(out, path, raw, _base_path(out))
    if script is not None:
        raw = {**raw, "command": script}
    has_command = raw.get("command") is not None
    has_call = raw.get("call") is not None
    if "script_file" in raw and script is None:
        pass  # its error is reported
    elif has_command and has_call:
        out.error(path, "a step has either 'command' or 'call', not both")
    elif not has_command and not has_call:
        out.error(path, "a step needs 'command' (a shell command) or 'call' (a Python callable)")
    command = script if script is not None else get("command")
    if command is not None:
        fields["command"] = _template(out, (*path, "command"), command, templates.check_command)
    fields["call"] = get("call")
    if "with" in raw and not has_call:
        out.warn((*path, "with"), "key 'with' is only used by 'call' steps and is ignored")
    fields["with_"] = _template_value(out, (*path, "with"), dict(get("with", {})))
    directory = get("dir")
    if directory is not None:
        fields["dir"] = _template(out, (*path, "dir"), directory, templates.check_text)
    fields["env"] = {
        str(k): _template(out, (*path, "env", k), _env_value(v), templates.check_text)
        for k, v in get("env", {}).items()
        if not out.has_error((*path, "env", k))
    }
    fields["timeout"] = _duration(out, (*path, "timeout"), raw.get("timeout"))
    retry = get("retry")
    if retry is not None:
        fields["retry"] = _build_retry(out, (*path, "retry"), retry)
    fields["continue_on_error"] = bool(get("continue_on_error", False))
    call_defs.build_step_extras(out, path, raw, fields)


def _base_path(out: _Collector) -> Path | None:
    return None if out.file.startswith("<") else Path(out.file)


def _build(data: Any, out: _Collector) -> WorkflowDefinition | None:
    if not isinstance(data, Mapping):
        if not out.errors:
            out.error((), "a workflow definition is a YAML mapping (name:, states: ...)")
        return None
    _warn_keys(out, (), data.keys(), awf.TOP_LEVEL_KEYS, awf.AWF_TOP_LEVEL_KEYS)

    inputs: list[InputDef] = []
    raw_inputs = data.get("inputs")
    if isinstance(raw_inputs, list):
        seen: set[str] = set()
        for i, raw in enumerate(raw_inputs):
            definition = _build_input(out, i, raw)
            if definition is None:
                continue
            if definition.name in seen:
                out.error(("inputs", i, "name"), f"input '{definition.name}' is declared twice")
            seen.add(definition.name)
            inputs.append(definition)

    raw_states = data.get("states")
    if not isinstance(raw_states, Mapping):
        return None
    built: dict[str, StateDef] = {}
    for key, raw in raw_states.items():
        if key == "initial":
            continue
        if not isinstance(key, str):
            out.error(("states",), f"state name {key!r} is not a string")
            continue
        state = _build_state(out, key, raw)
        if state is not None:
            built[key] = state
    string_states = {k: v for k, v in raw_states.items() if isinstance(k, str)}
    initial = raw_states.get("initial")
    check_graph(out, initial, built, string_states)

    from wfstate.definitions import triggers  # the schedule: and concurrency: keys

    schedules = triggers.build_schedules(out, str(data.get("name")), data.get("schedule"))
    concurrency = triggers.build_concurrency(out, data.get("concurrency"))
    for state in built.values():
        if state.workflow is not None and state.workflow == data.get("name"):
            out.error(
                ("states", state.name, "workflow"),
                f"circular sub-workflow call: '{state.workflow}' calls itself",
            )
    hooks = call_defs.build_hooks(out, ("hooks",), data.get("hooks"), awf.WORKFLOW_HOOK_EVENTS)
    outputs = call_defs.build_outputs(out, data.get("outputs"))

    if out.errors:
        return None
    version = data.get("version")
    return WorkflowDefinition(
        name=str(data["name"]),
        initial=str(initial),
        states=built,
        version="" if version is None else str(version),
        description=str(data.get("description") or ""),
        inputs=tuple(inputs),
        warnings=tuple(out.warnings),
        schedules=schedules,
        concurrency=concurrency,
        hooks=hooks,
        outputs=outputs,
        secret_env=tuple(str(name) for name in data.get("secret_env") or () if name),
    )


def _duplicates(source: SourceMap, out: _Collector) -> None:
    for path, key, line in source.duplicate_keys():
        where = path_str(path)
        what = f"state '{key}'" if path == ("states",) else f"key '{key}'"
        message = f"{what} is defined twice" + (
            f" in {where}" if where and path != ("states",) else ""
        )
        state = str(path[1]) if path[:1] == ("states",) and len(path) >= 2 else None
        entry: DefinitionProblem = {
            "file": out.file,
            "line": line,
            "state": state,
            "message": message,
        }
        out.errors.append(entry)


def _finish(
    data: Any,
    out: _Collector,
    *,
    path: Path | None,
    sha256: str,
) -> WorkflowDefinition:
    data = call_defs.expand_templates(out, data, path)
    _schema_errors(data, out)
    definition = _build(data, out)
    name = data.get("name") if isinstance(data, Mapping) else None
    out.raise_if_errors(name if isinstance(name, str) else None)
    assert definition is not None
    return dataclasses.replace(definition, path=path, sha256=sha256)


def loads_definition(source: bytes | str, *, path: Path | None = None) -> WorkflowDefinition:
    """Parse and validate the YAML text of a definition (``path`` is for messages).

    Raises:
        InvalidDefinition: with every error found (``.errors``).
    """
    raw = source.encode("utf-8") if isinstance(source, str) else source
    file = str(path) if path is not None else "<string>"
    try:
        data, source_map = load_yaml(raw)
    except YAMLSyntaxError as exc:
        out = _Collector(file, None)
        out.errors.append({"file": file, "line": exc.line, "state": None, "message": str(exc)})
        out.raise_if_errors(None)
        raise AssertionError("unreachable") from None
    out = _Collector(file, source_map)
    _duplicates(source_map, out)
    return _finish(data, out, path=path, sha256=hashlib.sha256(raw).hexdigest())


def load_definition(path: Path | str) -> WorkflowDefinition:
    """Load and validate one workflow file.

    Raises:
        InvalidDefinition: the file is not a valid definition (all errors at once).
        WorkflowNotFound: the file does not exist or cannot be read.
    """
    from wfstate.exceptions import WorkflowNotFound

    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WorkflowNotFound(
            f"cannot read workflow file {path}: {exc.strerror or exc}", path=str(path)
        ) from None
    return loads_definition(raw, path=path)


def definition_from_dict(
    data: Mapping[str, Any], *, path: Path | None = None, source_bytes: bytes = b""
) -> WorkflowDefinition:
    """Validate an already parsed definition (no line numbers: they are reported as 0).

    ``sha256`` is of ``source_bytes`` when given, else of the data as canonical JSON.

    Raises:
        InvalidDefinition: as :func:`load_definition`.
    """
    file = str(path) if path is not None else "<dict>"
    if source_bytes:
        digest = hashlib.sha256(source_bytes).hexdigest()
    else:
        canonical = json.dumps(data, sort_keys=True, default=str, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return _finish(dict(data), _Collector(file, None), path=path, sha256=digest)
