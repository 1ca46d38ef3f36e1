"""Compatibility with workflow files of the Go tool awf (docs/workflows.md, "Compatibility").

Two things live here: the rewriting of awf's Go-template spellings into the Jinja2 that
the engine renders (``{{.inputs.x}}`` -> ``{{inputs.x}}``, ``.states.s.Output`` ->
``states.s.output``), and the lists of keys awf has and wfstate does not support, so
that they are reported by name as "not supported" rather than as typos.
"""

from __future__ import annotations

import re

# PascalCase result fields of awf (Go struct fields) and their wfstate names.
STATE_FIELD_ALIASES = {
    "Output": "output",
    "Stderr": "stderr",
    "ExitCode": "exit_code",
    "Status": "status",
    "Attempt": "attempt",
    "Error": "error",
}
WORKFLOW_FIELD_ALIASES = {
    "ID": "id",
    "Id": "id",
    "Name": "name",
    "Version": "version",
    "Duration": "duration",
}
# awf's {{error.Message}} in a workflow_error hook.
ERROR_FIELD_ALIASES = {"Message": "message", "State": "state", "Type": "type"}

# --- keys ---------------------------------------------------------------------------

TOP_LEVEL_KEYS = frozenset(
    {"name", "version", "description", "inputs", "states", "schedule", "concurrency"}
    | {"hooks", "outputs"}
    | {"secret_env"}
)
AWF_TOP_LEVEL_KEYS = frozenset({"author", "tags", "env", "metadata"})
WORKFLOW_HOOK_EVENTS = ("workflow_start", "workflow_end", "workflow_error", "workflow_cancel")
STEP_HOOK_EVENTS = ("pre", "post")
HOOK_ACTION_KEYS = frozenset({"command", "log", "call", "with"})

COMMON_STATE_KEYS = frozenset({"type", "description"})
ROUTING_KEYS = frozenset({"on_success", "on_failure", "transitions"})
STATE_KEYS: dict[str, frozenset[str]] = {
    "step": COMMON_STATE_KEYS
    | ROUTING_KEYS
    | {"command", "call", "with", "dir", "env", "timeout", "retry", "continue_on_error"}
    | {"script_file", "operation", "hooks", "use_template", "parameters"},
    "parallel": COMMON_STATE_KEYS | ROUTING_KEYS | {"parallel", "strategy", "max_concurrent"},
    "terminal": COMMON_STATE_KEYS | {"status", "message"},
    # loops (definitions/loops.py): on_complete is on_success; break_condition is awf's
    # spelling of break_when
    "for_each": COMMON_STATE_KEYS
    | ROUTING_KEYS
    | {"items", "body", "max_iterations", "max_concurrent", "break_when", "break_condition"}
    | {"on_complete"},
    "while": COMMON_STATE_KEYS
    | ROUTING_KEYS
    | {"while", "body", "max_iterations", "break_when", "break_condition", "on_complete"},
    "call_workflow": COMMON_STATE_KEYS
    | ROUTING_KEYS
    | {"workflow", "inputs", "outputs", "timeout", "hooks"},
    "operation": COMMON_STATE_KEYS
    | ROUTING_KEYS
    | {"operation", "inputs", "with", "timeout", "retry", "continue_on_error", "hooks"},
    "wait": COMMON_STATE_KEYS
    | ROUTING_KEYS
    | {"signal", "schema", "timeout", "on_timeout", "assignees"},
    "sleep": COMMON_STATE_KEYS | ROUTING_KEYS | {"duration", "until"},
}
ALL_STATE_KEYS = frozenset().union(*STATE_KEYS.values())
AWF_STATE_KEYS = frozenset(
    {
        "hooks",
        "capture",
        "depends_on",
        "operation",
        "agent",
        "provider",
        "prompt",
        "options",
        "script_file",
        "working_dir",
        "outputs",
        "inputs",
        "workflow",
        "items",
        "body",
        "max_iterations",
        "on_complete",
        "while",
        "break_condition",
        "for_each",
        "loop",
        "call_workflow",
        "on_timeout",
        "conversation",
        "output_format",
    }
)
# awf state types wfstate cannot run: these states are errors, not warnings, because
# skipping them would change what the workflow does.
AWF_STATE_TYPES = {
    "agent": "awf 'agent' steps (AI providers) are not supported",
}

INPUT_KEYS = frozenset(
    {"name", "type", "required", "description", "default", "validation", "secret"}
)
AWF_INPUT_KEYS = frozenset({"example", "prompt"})
VALIDATION_KEYS = frozenset({"pattern", "enum", "min", "max"})
AWF_VALIDATION_KEYS = frozenset({"file_exists", "file_extension", "min_length", "max_length"})
RETRY_KEYS = frozenset(
    {
        "max_attempts",
        "initial_delay",
        "max_delay",
        "backoff",
        "multiplier",
        "jitter",
        "retryable_exit_codes",
    }
)
TRANSITION_KEYS = frozenset({"when", "goto"})


# --- templates ----------------------------------------------------------------------

_TAG = re.compile(r"(\{\{|\{%)(.*?)(\}\}|%\})", re.DOTALL)
_STRING = re.compile(r"""("([^"\\]|\\.)*"|'([^'\\]|\\.)*')""", re.DOTALL)
# A dot that starts a Go-template path: not after a name, a call, a subscript or a number.
_LEADING_DOT = re.compile(r"(?<![\w)\]}\s])\.(?=[A-Za-z_])|(?<=\s)\.(?=[A-Za-z_])")
_STATE_FIELD = re.compile(
    r"\b(states\.[A-Za-z_][\w-]*\.)(" + "|".join(STATE_FIELD_ALIASES) + r")\b"
)
_WORKFLOW_FIELD = re.compile(r"\b(workflow\.)(" + "|".join(WORKFLOW_FIELD_ALIASES) + r")\b")
_ERROR_FIELD = re.compile(r"\b(error\.)(" + "|".join(ERROR_FIELD_ALIASES) + r")\b")


def _normalise_code(code: str) -> str:
    """Rewrite awf spellings in Jinja2 expression code, leaving string literals alone."""
    out: list[str] = []
    pos = 0
    for match in _STRING.finditer(code):
        out.append(_normalise_bare(code[pos : match.start()]))
        out.append(match.group(0))
        pos = match.end()
    out.append(_normalise_bare(code[pos:]))
    return "".join(out)


def _normalise_bare(code: str) -> str:
    code = _LEADING_DOT.sub("", code)
    code = _STATE_FIELD.sub(lambda m: m.group(1) + STATE_FIELD_ALIASES[m.group(2)], code)
    code = _WORKFLOW_FIELD.sub(lambda m: m.group(1) + WORKFLOW_FIELD_ALIASES[m.group(2)], code)
    return _ERROR_FIELD.sub(lambda m: m.group(1) + ERROR_FIELD_ALIASES[m.group(2)], code)


def normalise_template(text: str) -> str:
    """awf template text -> Jinja2 text. Text outside ``{{ }}``/``{% %}`` is untouched.

    >>> normalise_template("echo {{.inputs.name}} {{.states.build.Output}}")
    'echo {{inputs.name}} {{states.build.output}}'
    """
    if "{" not in text:
        return text
    return _TAG.sub(lambda m: m.group(1) + _normalise_code(m.group(2)) + m.group(3), text)


def normalise_expression(expression: str) -> str:
    """An awf/Jinja2 ``when:`` expression -> Jinja2 (``{{ }}`` around it are removed)."""
    stripped = expression.strip()
    if stripped.startswith("{{") and stripped.endswith("}}") and stripped.count("{{") == 1:
        stripped = stripped[2:-2].strip()
    return _normalise_code(stripped)
