"""The API's OpenAPI document: what each operation declares, and the endpoint serving it.

The views in ``wfstate.api.views`` do the work; this module says what they accept and
answer, for drf-spectacular: summaries, descriptions, parameters, and every error
response an operation can give (``AUTH_ERRORS``, ``NOT_FOUND``... below). A view class
takes its declarations with one decorator (``@schema.document_runs``), so changing
what the API does and changing what it documents stay two separate edits.

Which views the document covers is decided by class: the subclasses of
:class:`SchemaMixin` (every wfstate view), whatever module they live in and whatever
else the host mounts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema_view,
)
from drf_spectacular.utils import extend_schema as spectacular_extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.schemas.inspectors import ViewInspector

import wfstate
from wfstate.api import serializers as s
from wfstate.api.exceptions import exception_handler
from wfstate.api.permissions import AccessMixin


def extend_schema(**kwargs: Any) -> Callable[[Any], Any]:
    """drf-spectacular's ``extend_schema``, based on drf-spectacular's ``AutoSchema``.

    The original bases its annotations on the host's ``DEFAULT_SCHEMA_CLASS``, read at
    import time; when a host leaves that at DRF's own ``AutoSchema``, generating the
    schema fails. Naming the base on the method first makes the API's schema work in
    any host (tests/test_host_install.py runs one without that setting).
    """
    decorate = spectacular_extend_schema(**kwargs)

    def apply(method: Any) -> Any:
        if getattr(method, "schema", None) is None and "schema" not in getattr(
            method, "kwargs", {}
        ):
            method.schema = AutoSchema
        return decorate(method)

    return apply


class SchemaMixin:
    """Base of every view the wfstate schema documents (and of no other).

    Sets drf-spectacular's inspector whatever the host's ``DEFAULT_SCHEMA_CLASS`` (DRF's
    own, or unset): the decorators below fall back to that setting, and drf-spectacular
    re-bases them on this class. :class:`WFStateSchemaGenerator` keeps exactly the
    endpoints whose view class inherits from this one.
    """

    schema: ViewInspector | None = AutoSchema()


# --- the error responses every operation documents -------------------------------------


def _error(description: str, serializer: Any = s.ErrorSerializer) -> OpenApiResponse:
    return OpenApiResponse(serializer, description=description)


AUTH_ERRORS = {
    401: _error("Not authenticated (with an authentication scheme that challenges)."),
    403: _error("Not authenticated, not allowed, or a session request without a CSRF token."),
}
NOT_FOUND = {404: _error("No such run (malformed ids included) or workflow.")}
BAD_REQUEST = {
    400: _error(
        "Invalid request: field errors in `errors`, or a body that is not JSON, too large "
        "(over 1 MB) or nested too deeply.",
        s.ValidationErrorSerializer,
    ),
    415: _error("The body is not application/json."),
}
CONFLICT = {409: _error("The run's state forbids this (see `code`).", s.ConflictErrorSerializer)}
UNAVAILABLE = {503: _error("Storage failed (full disk, unreachable filesystem); retry later.")}

# --- parameters ----------------------------------------------------------------------------

# Django refuses NUL characters in form and search values (PostgreSQL cannot store
# them): say so, so that a client (and schemathesis) knows such a value is invalid.
NO_NUL = r"^[^\x00]*$"
LIST_PARAMETERS = [
    OpenApiParameter(
        "search",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        pattern=NO_NUL,
        description="Runs whose id or workflow name contains this text.",
    ),
    OpenApiParameter(
        "workflow_name",
        OpenApiTypes.STR,
        OpenApiParameter.QUERY,
        pattern=NO_NUL,
        description="Only runs of this workflow.",
    ),
]
RUN_ID = OpenApiParameter(
    "workflow_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The run's id (a UUID4)."
)
ETAG = OpenApiParameter(
    "ETag",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    response=[200, 304],
    description='The run\'s revision, quoted: `"12"`.',
)
IF_NONE_MATCH = OpenApiParameter(
    "If-None-Match",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="An ETag from an earlier response: 304 with no body while the run is unchanged.",
)
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    pattern=r"^[ -~]{1,255}$",
    description=(
        "A client's key (1-255 printable ASCII characters): a retry with it returns the same run."
    ),
)
LOCATION = OpenApiParameter(
    "Location",
    OpenApiTypes.URI,
    OpenApiParameter.HEADER,
    response=[200, 202],
    description="The run's URL.",
)
WORKFLOW_NAME = OpenApiParameter(
    "name", OpenApiTypes.STR, OpenApiParameter.PATH, description="The workflow's name."
)
LOOP_NAME = OpenApiParameter(
    "loop", OpenApiTypes.STR, OpenApiParameter.PATH, description="A loop state's name."
)


# --- runs (RunViewSet) ---------------------------------------------------------------------

document_runs = extend_schema_view(
    list=extend_schema(
        summary="List runs",
        description=(
            "Runs from the index (never the state files), newest first, paginated. "
            "Filter by `status`, `workflow_name` and start time; `search` matches the "
            "start of the run id or of the workflow name; `ordering` takes the listed "
            "fields (`-` for descending)."
        ),
        responses={
            200: s.RunSummarySerializer(many=True),
            400: BAD_REQUEST[400],
            **AUTH_ERRORS,
            404: _error("A page that is not a positive integer, or past the last page."),
        },
        parameters=LIST_PARAMETERS,
    ),
    create=extend_schema(
        summary="Start a run",
        description=(
            "Validates the inputs against the workflow's input schema, writes the run's "
            "first (pending) state and hands it to the background task backend. Returns "
            "202 at once with the run and its URL; poll the URL to follow it. With an "
            "`Idempotency-Key` header (or `idempotency_key` in the body), a repeated request "
            "returns the run the first one started, with 200; the same key with other "
            "inputs is a 409 `idempotency_conflict`."
        ),
        request=s.RunCreateSerializer,
        responses={
            202: s.RunSerializer,
            200: s.RunSerializer,
            **BAD_REQUEST,
            **AUTH_ERRORS,
            404: _error("No workflow of that name."),
            **CONFLICT,
            **UNAVAILABLE,
        },
        parameters=[LOCATION, IDEMPOTENCY_KEY],
    ),
    retrieve=extend_schema(
        summary="A run's state",
        description=(
            "The run's whole state, read from its state file (the truth). `ETag` is the "
            "revision; send it back in `If-None-Match` to get 304 while nothing changed."
        ),
        parameters=[RUN_ID, IF_NONE_MATCH, ETAG],
        responses={
            200: s.RunSerializer,
            304: OpenApiResponse(description="Not modified since the given ETag."),
            **AUTH_ERRORS,
            **NOT_FOUND,
            409: _error(
                "The state file is corrupt (code `corrupt_state`).", s.ConflictErrorSerializer
            ),
            **UNAVAILABLE,
        },
    ),
    destroy=extend_schema(
        summary="Delete a run",
        description="Deletes the state file, its side files and the index row.",
        parameters=[RUN_ID],
        responses={
            204: OpenApiResponse(description="Deleted."),
            **AUTH_ERRORS,
            **NOT_FOUND,
            409: _error(
                "The run is executing (code `still_running`; cancel it first) or its lock is busy.",
                s.ConflictErrorSerializer,
            ),
            **UNAVAILABLE,
        },
    ),
    resume=extend_schema(
        summary="Resume a run",
        description=(
            "Resumes a crashed, failed or cancelled run (a completed one only with "
            '`from` other than "current") in the background. Input overrides are '
            "validated like new inputs."
        ),
        parameters=[RUN_ID],
        request=s.RunResumeSerializer,
        responses={
            202: s.RunSerializer,
            **BAD_REQUEST,
            **AUTH_ERRORS,
            **NOT_FOUND,
            409: _error(
                "Not resumable (`not_resumable`, `definition_changed`), being executed "
                "(`run_locked`, with its `owner`) or corrupt (`corrupt_state`).",
                s.ConflictErrorSerializer,
            ),
            **UNAVAILABLE,
        },
    ),
    loop=extend_schema(
        summary="A loop's iterations",
        description=(
            "A for_each or while loop of the run: its finished iterations (each with "
            "every body step's result), read from the loop's side file, and the "
            "iterations in flight. `file` picks an earlier run of the loop (a nested "
            "loop's, as its outer iteration's record names it)."
        ),
        parameters=[RUN_ID, LOOP_NAME, s.LoopPageSerializer],
        responses={
            200: s.LoopIterationsSerializer,
            **BAD_REQUEST,
            **AUTH_ERRORS,
            **NOT_FOUND,
            409: _error("The state or the loop's side file is corrupt.", s.ConflictErrorSerializer),
            **UNAVAILABLE,
        },
    ),
    cancel=extend_schema(
        summary="Cancel a run",
        description=(
            'A run nobody executes is cancelled at once (`outcome` "cancelled"); a live '
            'executor is asked to stop (`outcome` "requested") and records the run '
            "cancelled within 2 seconds."
        ),
        parameters=[RUN_ID],
        request=None,
        responses={
            202: s.CancelResultSerializer,
            **AUTH_ERRORS,
            **NOT_FOUND,
            409: _error(
                "The run already ended (`run_finished`) or is corrupt.", s.ConflictErrorSerializer
            ),
            **UNAVAILABLE,
        },
    ),
    signal=extend_schema(
        summary="Send a signal to a run",
        description=(
            "Keeps the signal (and its payload) durably in the run's mailbox: a run "
            "waiting for it is woken at once through the task backend; a run not yet at "
            "its wait step takes it when it gets there. Each signal is taken exactly once."
        ),
        parameters=[RUN_ID],
        request=s.RunSignalSerializer,
        responses={
            202: s.SignalResultSerializer,
            400: _error(
                "The body is malformed, or the payload fails the wait step's schema "
                "(code `invalid_signal`); nothing changed.",
                s.ValidationErrorSerializer,
            ),
            **AUTH_ERRORS,
            **NOT_FOUND,
            409: _error(
                "Nothing can take the signal (code `signal_refused`): the run ended, or no "
                "wait step for it lies ahead; or the run is corrupt.",
                s.ConflictErrorSerializer,
            ),
            **UNAVAILABLE,
        },
    ),
)


# --- workflow definitions (WorkflowViewSet) ------------------------------------------------

document_workflows = extend_schema_view(
    list=extend_schema(
        summary="List workflows",
        description=(
            "Every workflow definition file, valid or not: a valid one with its input "
            "schema and graph, an invalid one with `valid: false` and its errors."
        ),
        responses={200: s.WorkflowSerializer(many=True), **AUTH_ERRORS},
    ),
    retrieve=extend_schema(
        summary="A workflow",
        description=(
            "One workflow definition, with its input schema and graph; an invalid one "
            "with `valid: false` and its errors."
        ),
        parameters=[WORKFLOW_NAME],
        responses={
            200: s.WorkflowSerializer,
            **AUTH_ERRORS,
            404: _error("No workflow of that name."),
        },
    ),
)


# --- the OpenAPI document itself -------------------------------------------------------------


class WFStateSchemaGenerator(SchemaGenerator):
    """Documents the wfstate views only, under whatever prefix the host mounted them."""

    def _initialise_endpoints(self) -> None:
        super()._initialise_endpoints()  # type: ignore[no-untyped-call]
        # drf-spectacular's endpoints are (path, regex, method, callback) 4-tuples; a
        # view's callback carries its class (a viewset's, the class of the action).
        endpoints: list[Any] = list(self.endpoints or [])
        self.endpoints = [e for e in endpoints if _documented(getattr(e[3], "cls", None))]


def _documented(view_class: Any) -> bool:
    return isinstance(view_class, type) and issubclass(view_class, SchemaMixin)


class SchemaView(SchemaMixin, AccessMixin, SpectacularAPIView):
    """``GET schema/``: the OpenAPI 3.1 document of the wfstate endpoints (this one too)."""

    generator_class = WFStateSchemaGenerator
    serve_public = True
    custom_settings = {
        "TITLE": "wfstate API",
        "DESCRIPTION": (
            "Start, follow, resume, cancel and delete workflow runs, and read workflow "
            'definitions. Errors are `{"detail", "code"}` objects.'
        ),
        "VERSION": wfstate.__version__,
        "OAS_VERSION": "3.1.0",
        "COMPONENT_SPLIT_REQUEST": True,
        "SCHEMA_PATH_PREFIX": None,
        "ENUM_NAME_OVERRIDES": {
            "RunStatusEnum": "wfstate.state.RunStatus",
            "StepStatusEnum": "wfstate.state.StepStatus",
            "IndexStatusEnum": "wfstate.models.RunStatusChoices",
        },
    }

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return exception_handler

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # DRF ignores an empty ``?format=``; a value outside the documented enum is a 404
        # whether empty or not.
        if not force and request.query_params.get("format", None) == "":
            raise NotFound("Unknown format ''.")
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        summary="This OpenAPI schema",
        description=(
            "OpenAPI 3.1 of the wfstate endpoints only, under the prefix the host mounted "
            "them at. YAML by default; JSON with `Accept: application/vnd.oai.openapi+json` "
            "or `?format=json`."
        ),
        responses={
            200: OpenApiResponse(OpenApiTypes.OBJECT),
            **AUTH_ERRORS,
            404: _error("A `format` other than json or yaml."),
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response: Response = super().get(request, *args, **kwargs)  # type: ignore[no-untyped-call]
        return response
