"""Request and response bodies of the API.

Responses are rendered through these serializers (never hand-built dicts), so the
OpenAPI schema drf-spectacular derives from them is exactly what the API sends; the
test suite checks every response against that schema.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from wfstate.index import ROW_FIELDS
from wfstate.models import RunStatusChoices, WorkflowRun
from wfstate.state import RunStatus, StepStatus

# Names as the workflow JSON Schema (wfstate/schema/workflow.schema.json) allows them.
WORKFLOW_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
STATE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"


# drf-spectacular appends "null" to the type list for allow_null.
@extend_schema_field({"type": ["object", "array", "string", "number", "boolean"]})
class AnyJSONField(serializers.JSONField):
    """Any JSON value, null included.

    (A plain ``JSONField(allow_null=True)`` becomes ``oneOf: [{}, {type: null}]`` in
    drf-spectacular's OpenAPI 3.1, which null matches twice, so no value is valid.)
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)


# --- runs: the index (lists) ----------------------------------------------------------


@extend_schema_field({"type": "string", "format": "uri"})
class RunURLField(serializers.Field[str, str, str, Any]):
    """The absolute URL of a run's detail, from its ``workflow_id``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs["read_only"] = True
        kwargs["source"] = "*"
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> str:
        workflow_id = value["workflow_id"] if isinstance(value, dict) else value.workflow_id
        return run_url(workflow_id, self.context.get("request"))


def run_url(workflow_id: str, request: Any) -> str:
    return reverse("wfstate-api:run-detail", kwargs={"workflow_id": workflow_id}, request=request)


class RunSummarySerializer(serializers.ModelSerializer[WorkflowRun]):
    """One run as the index knows it (a projection of its state file)."""

    url = RunURLField(help_text="This run's detail (its full state, read from the file).")

    class Meta:
        model = WorkflowRun
        # The index's columns, as the index defines them.
        fields = ["workflow_id", "url", *ROW_FIELDS]
        read_only_fields = fields


# --- runs: the state document (details) -----------------------------------------------


class StepResultSerializer(serializers.Serializer[dict[str, Any]]):
    """One state's result inside a run (docs/state-file.md)."""

    name = serializers.CharField()
    status = serializers.ChoiceField(choices=[s.value for s in StepStatus])
    output = AnyJSONField(help_text="stdout of a command step, return value of a call step")
    stderr = serializers.CharField(allow_null=True, allow_blank=True)
    exit_code = serializers.IntegerField(allow_null=True)
    attempt = serializers.IntegerField()
    error = serializers.CharField(allow_null=True, allow_blank=True)
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    duration_ms = serializers.IntegerField(allow_null=True)
    output_truncated = serializers.BooleanField(
        help_text="the output was cut here; the whole output is kept beside the state file"
    )
    traceback = serializers.CharField(allow_null=True, allow_blank=True)
    process = serializers.DictField(
        child=AnyJSONField(),
        allow_null=True,
        help_text=(
            "while a command step runs: its process group (pgid, pid, start_time, boot_id, "
            "host, token), so that it can be killed if its executor dies; null otherwise"
        ),
    )
    signal = serializers.CharField(
        allow_null=True, help_text="a wait step's signal, once taken; null otherwise"
    )
    signal_id = serializers.CharField(
        allow_null=True, help_text="the id of the signal a wait step took (exactly once)"
    )
    payload = AnyJSONField(help_text="the signal's payload (also the step's output)")
    sender = serializers.DictField(
        child=AnyJSONField(),
        allow_null=True,
        help_text='who sent the signal, from where: {"kind": "api"|"admin"|"command"|"python", '
        '"user", "remote_addr"}',
    )
    received_at = serializers.DateTimeField(allow_null=True)
    loop = serializers.DictField(
        child=AnyJSONField(),
        allow_null=True,
        required=False,
        help_text=(
            "a for_each/while loop's progress: its side file, the records the state "
            "counts, done, the iterations in flight (`running`); null for other states. "
            "The iterations themselves: GET runs/{id}/loops/{loop}/"
        ),
    )
    child_run_id = serializers.UUIDField(
        format="hex_verbose",
        allow_null=True,
        required=False,
        help_text="a call_workflow step: the child run's id",
    )
    child_url = serializers.SerializerMethodField(help_text="the child run's URL, if any")
    hooks = serializers.DictField(
        child=AnyJSONField(),
        allow_null=True,
        required=False,
        help_text='the step\'s hooks as they ran: {"pre": [...], "post": [...]}',
    )

    def get_child_url(self, obj: dict[str, Any]) -> str | None:
        child = obj.get("child_run_id")
        return run_url(child, self.context.get("request")) if child else None


class LoopPageSerializer(serializers.Serializer[dict[str, Any]]):
    """The query of GET runs/{id}/loops/{loop}/."""

    file = serializers.RegexField(
        r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        required=False,
        help_text="one run of the loop (a nested loop's, named by its outer iteration)",
    )
    offset = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=1000, default=100)


class LoopIterationsSerializer(serializers.Serializer[dict[str, Any]]):
    """A loop's iterations, read from its side file (docs/state-file.md, "Loops")."""

    loop = serializers.CharField()
    file = serializers.CharField(help_text="the run of the loop shown (its side file)")
    type = serializers.ChoiceField(choices=["for_each", "while"])
    status = serializers.CharField(allow_null=True)
    count = serializers.IntegerField(help_text="iterations finished")
    length = serializers.IntegerField(allow_null=True, help_text="items of a for_each")
    max_iterations = serializers.IntegerField(allow_null=True)
    broke_at = serializers.IntegerField(allow_null=True)
    running = serializers.ListField(
        child=serializers.DictField(child=AnyJSONField()),
        help_text="iterations in flight: index, item, the body step at, the steps done",
    )
    offset = serializers.IntegerField()
    limit = serializers.IntegerField()
    iterations = serializers.ListField(
        child=serializers.DictField(child=AnyJSONField()),
        help_text="finished iterations by index: index, item, status, exit_to, times, states",
    )


class RunSerializer(serializers.Serializer[dict[str, Any]]):
    """A run's whole state, read from its state file (the truth)."""

    schema_version = serializers.IntegerField()
    workflow_id = serializers.UUIDField(format="hex_verbose")
    url = RunURLField()
    workflow_name = serializers.CharField()
    workflow_version = serializers.CharField(allow_blank=True)
    definition_sha256 = serializers.CharField(allow_blank=True)
    status = serializers.ChoiceField(choices=[s.value for s in RunStatus])
    current_state = serializers.CharField(allow_null=True, allow_blank=True)
    started_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)
    inputs = serializers.DictField(child=AnyJSONField())
    started_by = serializers.DictField(
        child=AnyJSONField(),
        allow_null=True,
        required=False,
        help_text=(
            'what started the run: {"kind": "command"|"api"|"admin"|"schedule"|"parent", ...}'
        ),
    )
    queue_position = serializers.IntegerField(
        allow_null=True,
        required=False,
        help_text=(
            "a pending run held back by a concurrency limit: its place in the queue (0 = next)"
        ),
    )
    states = serializers.DictField(
        child=StepResultSerializer(), help_text="results by state name, in execution order"
    )
    revision = serializers.IntegerField(help_text="increases by one on every write; the ETag")
    error = serializers.CharField(allow_null=True, allow_blank=True)
    history = serializers.ListField(
        child=serializers.DictField(child=AnyJSONField()),
        help_text="step results a resume rewound past, and each resume's options",
    )
    parent_run_id = serializers.UUIDField(
        format="hex_verbose",
        allow_null=True,
        required=False,
        help_text="the run whose call_workflow step started this one; null for a top-level run",
    )
    parent_url = serializers.SerializerMethodField(help_text="the parent run's URL, if any")
    started_by = serializers.DictField(child=AnyJSONField(), allow_null=True, required=False)
    outputs = serializers.DictField(
        child=AnyJSONField(), required=False, help_text="the workflow's declared outputs"
    )
    hooks = serializers.DictField(
        child=AnyJSONField(), required=False, help_text="workflow hooks as they ran, by event"
    )
    warnings = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="e.g. a failed hook"
    )
    exit_code = serializers.IntegerField(allow_null=True, required=False)

    def get_parent_url(self, obj: dict[str, Any]) -> str | None:
        parent = obj.get("parent_run_id")
        return run_url(parent, self.context.get("request")) if parent else None

    waiting_for = serializers.DictField(
        child=AnyJSONField(),
        allow_null=True,
        help_text=(
            'what wakes a waiting run: {"kind": "signal"|"time", "state", "signal", "until", '
            '"since"}; null unless the run is waiting'
        ),
    )


class CancelResultSerializer(serializers.Serializer[dict[str, Any]]):
    outcome = serializers.CharField(
        help_text=(
            '"cancelled": nobody executed the run and it was marked at once; '
            '"requested": its executor was asked to stop'
        )
    )
    run = RunSerializer()


# --- runs: requests -------------------------------------------------------------------


class RunCreateSerializer(serializers.Serializer[dict[str, Any]]):
    workflow_name = serializers.RegexField(
        WORKFLOW_NAME_PATTERN, max_length=128, help_text="a workflow's name"
    )
    inputs = serializers.DictField(
        child=AnyJSONField(),
        required=False,
        default=dict,
        help_text="input values by name, in the types the definition declares",
    )
    idempotency_key = serializers.RegexField(
        r"^[ -~]{1,255}$",
        required=False,
        max_length=255,
        help_text="as the Idempotency-Key header: a retry with the same key returns the same run",
    )


class RunResumeSerializer(serializers.Serializer[dict[str, Any]]):
    """``from`` is a Python keyword, hence the field set built in ``get_fields``."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {
            "from": serializers.RegexField(
                STATE_NAME_PATTERN,
                max_length=128,
                required=False,
                default="current",
                help_text=(
                    '"current" re-runs the step in flight, "previous" the last completed '
                    "one, or the name of any executed state"
                ),
            ),
            "inputs": serializers.DictField(
                child=AnyJSONField(),
                required=False,
                allow_null=True,
                default=None,
                help_text="input overrides, validated like a new run's inputs",
            ),
            "allow_changed_definition": serializers.BooleanField(
                required=False,
                default=False,
                help_text="resume even if the workflow's definition changed since the run began",
            ),
        }


class RunSignalSerializer(serializers.Serializer[dict[str, Any]]):
    signal = serializers.RegexField(
        r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=128, help_text="the signal's name"
    )
    payload = AnyJSONField(
        required=False,
        default=dict,
        help_text="the payload (default {}), checked against the wait step's schema",
    )


class SignalRecordSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.CharField(help_text="the signal's id (32 hex digits)")
    signal = serializers.CharField()
    payload = AnyJSONField()
    sender = serializers.DictField(child=AnyJSONField())
    received_at = serializers.DateTimeField()


class SignalResultSerializer(serializers.Serializer[dict[str, Any]]):
    signal = SignalRecordSerializer(help_text="the signal as kept in the run's mailbox")
    run = RunSerializer(help_text="the run when the signal was accepted")


# --- workflows --------------------------------------------------------------------------


class InputDefSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["string", "integer", "number", "boolean"])
    # Fields named like Field attributes (`required`, `source`, `label`, `errors`): the
    # serializer metaclass moves declared fields out of the class namespace, so only
    # the type checker sees a clash.
    required = serializers.BooleanField()  # type: ignore[assignment]
    default = AnyJSONField(help_text="null when the input has no default")
    description = serializers.CharField(allow_blank=True)
    validation = serializers.DictField(child=AnyJSONField())


class GraphNodeSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.CharField()
    type = serializers.ChoiceField(
        choices=[
            "step",
            "parallel",
            "terminal",
            "for_each",
            "while",
            "call_workflow",
            "operation",
            "wait",
            "sleep",
        ]
    )
    terminal_status = serializers.ChoiceField(choices=["success", "failure"], allow_null=True)
    workflow = serializers.CharField(
        allow_null=True, required=False, help_text="a call_workflow state: the child workflow"
    )
    hooks = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="the state's hooks (pre, post)"
    )


class GraphEdgeSerializer(serializers.Serializer[dict[str, Any]]):
    source = serializers.CharField()  # type: ignore[assignment]
    target = serializers.CharField()
    kind = serializers.ChoiceField(
        choices=["success", "failure", "when", "default", "branch", "body", "timeout"]
    )
    label = serializers.CharField(allow_blank=True)  # type: ignore[assignment]


class GraphSerializer(serializers.Serializer[dict[str, Any]]):
    initial = serializers.CharField()
    nodes = GraphNodeSerializer(many=True)
    edges = GraphEdgeSerializer(many=True)


class DefinitionErrorSerializer(serializers.Serializer[dict[str, Any]]):
    file = serializers.CharField()
    line = serializers.IntegerField(help_text="1-based; 0 when the problem has no one line")
    state = serializers.CharField(allow_null=True, help_text="the state concerned, if any")
    message = serializers.CharField()


class WorkflowSerializer(serializers.Serializer[Any]):
    """A workflow (a registry entry): its definition, with the JSON Schema of its inputs
    and its graph; or, when its file is invalid, ``valid: false`` and every error."""

    name = serializers.CharField()
    url = serializers.SerializerMethodField()
    valid = serializers.BooleanField(
        help_text="false: the file is invalid (see `errors`) and the workflow cannot be run"
    )
    errors = DefinitionErrorSerializer(  # type: ignore[assignment]
        many=True, help_text="every problem of an invalid definition; empty when valid"
    )
    version = serializers.CharField(allow_blank=True)
    description = serializers.CharField(allow_blank=True)
    sha256 = serializers.CharField(allow_blank=True, help_text="of the definition file")
    inputs = InputDefSerializer(many=True)
    input_schema = serializers.SerializerMethodField(
        help_text="JSON Schema that POST runs/ validates `inputs` against; null when invalid"
    )
    graph = serializers.SerializerMethodField(help_text="null when invalid")
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="keys of the file that wfstate does not support"
    )

    @extend_schema_field({"type": "string", "format": "uri"})
    def get_url(self, entry: Any) -> str:
        return reverse(
            "wfstate-api:workflow-detail",
            kwargs={"name": entry.name},
            request=self.context.get("request"),
        )

    @extend_schema_field(serializers.DictField(child=AnyJSONField(), allow_null=True))
    def get_input_schema(self, entry: Any) -> dict[str, Any] | None:
        from wfstate.definitions import input_json_schema

        if entry.definition is None:
            return None
        return input_json_schema(entry.definition)

    @extend_schema_field(GraphSerializer(allow_null=True))
    def get_graph(self, entry: Any) -> dict[str, Any] | None:
        if entry.definition is None:
            return None
        return GraphSerializer(entry.definition.graph()).data


# --- errors (documentation of the one error format; see api/exceptions.py) -------------


class ErrorSerializer(serializers.Serializer[dict[str, Any]]):
    detail = serializers.CharField(help_text="a human-readable message")
    code = serializers.CharField(help_text="a stable, machine-readable code")


class ValidationErrorSerializer(ErrorSerializer):
    errors = serializers.DictField(  # type: ignore[assignment]
        child=AnyJSONField(),
        required=False,
        help_text='messages by field, e.g. {"inputs": {"tag": ["This input is required."]}}',
    )


class ConflictErrorSerializer(ErrorSerializer):
    owner = serializers.DictField(
        child=AnyJSONField(),
        required=False,
        allow_null=True,
        help_text="with code run_locked: the executor holding the run (pid, host, since)",
    )
    errors = serializers.DictField(  # type: ignore[assignment]
        child=AnyJSONField(),
        required=False,
        help_text="with code invalid_definition: every problem of the definition",
    )


# Status values of the index, for filter documentation.
INDEX_STATUSES = [choice.value for choice in RunStatusChoices]
