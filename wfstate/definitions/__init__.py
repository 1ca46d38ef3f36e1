"""Workflow definitions: YAML loading, JSON Schema and semantic validation, inputs,
templates and shell quoting (docs/workflows.md)."""

from wfstate.definitions.inputs import (
    input_json_schema,
    parse_input_pairs,
    validate_inputs,
)
from wfstate.definitions.loader import (
    definition_from_dict,
    load_definition,
    loads_definition,
    parse_duration,
    workflow_schema,
)
from wfstate.definitions.model import (
    InputDef,
    RetryPolicy,
    StateDef,
    Transition,
    WorkflowDefinition,
)
from wfstate.definitions.registry import (
    Registry,
    clear_cache,
    get_registry,
    resolve_definition,
)
from wfstate.definitions.templates import (
    build_context,
    evaluate,
    render_command,
    render_text,
    render_value,
)

__all__ = [
    "InputDef",
    "Registry",
    "RetryPolicy",
    "StateDef",
    "Transition",
    "WorkflowDefinition",
    "build_context",
    "clear_cache",
    "definition_from_dict",
    "evaluate",
    "get_registry",
    "input_json_schema",
    "load_definition",
    "loads_definition",
    "parse_duration",
    "parse_input_pairs",
    "render_command",
    "render_text",
    "render_value",
    "resolve_definition",
    "validate_inputs",
    "workflow_schema",
]
