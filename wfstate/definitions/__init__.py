"""Workflow definitions: YAML loading, JSON Schema and semantic validation, inputs,
templates and shell quoting (SPEC §3)."""

from wfstate.definitions.model import InputDef, RetryPolicy, StateDef, Transition, WorkflowDefinition

__all__ = ["InputDef", "RetryPolicy", "StateDef", "Transition", "WorkflowDefinition"]
