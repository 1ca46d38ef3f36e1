"""The API's views: thin faces over ``wfstate.runs`` (SPEC §9).

Each view parses its request, calls one service function, and formats the result.
Lists read the index (``WorkflowRun``); a run's detail reads its state file.

Everything but authentication is set here rather than taken from the host's
``REST_FRAMEWORK`` defaults: permissions (``WFSTATE["API_PERMISSION_CLASSES"]``, read
on each request), the bounded JSON parser, the JSON renderer, the error format, the
pagination and the filters. A host whose own API is open or renders differently does
not change what this API promises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
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
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.schemas.inspectors import ViewInspector

import wfstate
from wfstate import audit, runs
from wfstate.api import serializers as s
from wfstate.api.exceptions import exception_handler
from wfstate.api.filters import RunPagination, WorkflowRunFilter
from wfstate.api.parsers import BoundedJSONParser
from wfstate.api.permissions import AccessMixin
from wfstate.index import search_runs
from wfstate.models import WorkflowRun
from wfstate.state import WorkflowState


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
LOCATION = OpenApiParameter(
    "Location",
    OpenApiTypes.URI,
    OpenApiParameter.HEADER,
    response=[202],
    description="The new run's URL.",
)


# --- the common base ---------------------------------------------------------------------


class WFStateAPIMixin(AccessMixin):
    """Policies of every wfstate view (the module docstring says why)."""

    parser_classes: Sequence[type[BaseParser]] = [BoundedJSONParser]
    renderer_classes: Sequence[type[BaseRenderer]] = [JSONRenderer]
    # drf-spectacular's, whatever the host's DEFAULT_SCHEMA_CLASS: the decorators below
    # fall back to that setting, and drf-spectacular re-bases them on this class.
    schema: ViewInspector | None = AutoSchema()

    def get_exception_handler(self) -> Callable[..., Response | None]:
        return exception_handler

    # The audit trail: what a request changes is recorded as done by its user (or API
    # key) from its IP; DRF calls finalize_response whatever happened, which resets it.
    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # type: ignore[misc]
        self._acting = audit.acting_as(lambda: audit.request_actor(request, "api"))
        self._acting.__enter__()

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        acting = self.__dict__.pop("_acting", None)
        if acting is not None:
            acting.__exit__(None, None, None)
        return super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]


def _etag(state: WorkflowState) -> str:
    return f'"{state.revision}"'


def _matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison against a comma-separated If-None-Match list."""
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return any(tag == "*" or tag.removeprefix("W/") == etag for tag in tags)


class IndexSearchFilter(SearchFilter):
    """DRF's search parameter, answered by the index's prefix ranges (as in the admin)
    instead of ``LIKE`` scans, so a search costs the same at 1,000 and 100,000 runs."""

    def filter_queryset(self, request: Request, queryset: Any, view: Any) -> Any:
        return search_runs(queryset, " ".join(self.get_search_terms(request)))


# --- runs ----------------------------------------------------------------------------------


@extend_schema_view(
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
            "202 at once with the run and its URL; poll the URL to follow it."
        ),
        request=s.RunCreateSerializer,
        responses={
            202: s.RunSerializer,
            **BAD_REQUEST,
            **AUTH_ERRORS,
            404: _error("No workflow of that name."),
            **CONFLICT,
            **UNAVAILABLE,
        },
        parameters=[LOCATION],
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
)
class RunViewSet(WFStateAPIMixin, viewsets.GenericViewSet[WorkflowRun]):
    queryset = WorkflowRun.objects.all()
    serializer_class = s.RunSummarySerializer
    lookup_field = "workflow_id"
    # Any single path segment reaches the view; the store's id check turns whatever is
    # not a UUID4 (traversal included) into a 404 before a path is built.
    lookup_value_regex = "[^/]+"
    pagination_class = RunPagination
    filter_backends = [DjangoFilterBackend, IndexSearchFilter, OrderingFilter]
    filterset_class = WorkflowRunFilter
    # An id by its first characters (as tools print them), a workflow by the start of its
    # name: both answered by an index (see wfstate.index.search_q).
    search_fields = ["^workflow_id", "^workflow_name"]
    ordering_fields = [
        "started_at",
        "updated_at",
        "completed_at",
        "duration_ms",
        "workflow_name",
        "status",
        "steps_done",
    ]
    ordering = ["-started_at", "-id"]

    def get_queryset(self) -> QuerySet[WorkflowRun]:
        return WorkflowRun.objects.all()

    def get_serializer_class(self) -> Any:
        return {
            "create": s.RunCreateSerializer,
            "resume": s.RunResumeSerializer,
        }.get(self.action, s.RunSummarySerializer)

    def _run(self, state: WorkflowState) -> dict[str, Any]:
        return dict(s.RunSerializer(state.to_dict(), context=self.get_serializer_context()).data)

    def list(self, request: Request) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        serializer = s.RunSummarySerializer(page, many=True, context=self.get_serializer_context())
        return self.get_paginated_response(serializer.data)

    def create(self, request: Request) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        state = runs.start_run(
            body.validated_data["workflow_name"], body.validated_data["inputs"], detach=True
        )
        data = self._run(state)
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})

    def retrieve(self, request: Request, workflow_id: str) -> Response:
        state = runs.load_run(workflow_id)
        etag = _etag(state)
        if _matches(request.headers.get("If-None-Match", ""), etag):
            return Response(status=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
        return Response(self._run(state), headers={"ETag": etag})

    def destroy(self, request: Request, workflow_id: str) -> Response:
        runs.delete_run(workflow_id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, workflow_id: str) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        state = runs.resume_run(
            workflow_id,
            from_state=body.validated_data["from"],
            inputs=body.validated_data["inputs"],
            allow_changed_definition=body.validated_data["allow_changed_definition"],
            detach=True,
        )
        return Response(self._run(state), status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, workflow_id: str) -> Response:
        outcome, state = runs.cancel_run(workflow_id)
        return Response(
            {"outcome": outcome, "run": self._run(state)}, status=status.HTTP_202_ACCEPTED
        )


# --- workflow definitions ----------------------------------------------------------------

WORKFLOW_NAME = OpenApiParameter(
    "name", OpenApiTypes.STR, OpenApiParameter.PATH, description="The workflow's name."
)


@extend_schema_view(
    list=extend_schema(
        summary="List workflows",
        description="Every workflow definition, with its input schema and graph.",
        responses={200: s.WorkflowSerializer(many=True), **AUTH_ERRORS, **CONFLICT},
    ),
    retrieve=extend_schema(
        summary="A workflow",
        description="One workflow definition, with its input schema and graph.",
        parameters=[WORKFLOW_NAME],
        responses={
            200: s.WorkflowSerializer,
            **AUTH_ERRORS,
            404: _error("No workflow of that name."),
            409: _error(
                "The definition file is invalid (code `invalid_definition`).",
                s.ConflictErrorSerializer,
            ),
        },
    ),
)
class WorkflowViewSet(WFStateAPIMixin, viewsets.ViewSet):
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def list(self, request: Request) -> Response:
        definitions = runs.list_definitions()
        return Response(
            s.WorkflowSerializer(definitions, many=True, context={"request": request}).data
        )

    def retrieve(self, request: Request, name: str) -> Response:
        definition = runs.get_definition(name)
        return Response(s.WorkflowSerializer(definition, context={"request": request}).data)


# --- the OpenAPI schema ------------------------------------------------------------------


class WFStateSchemaGenerator(SchemaGenerator):
    """Documents the wfstate views only, under whatever prefix the host mounted them."""

    def _initialise_endpoints(self) -> None:
        super()._initialise_endpoints()
        # drf-spectacular's endpoints are (path, regex, method, callback) 4-tuples.
        endpoints: list[Any] = list(self.endpoints or [])
        ours = [
            e
            for e in endpoints
            if getattr(getattr(e[3], "cls", None), "__module__", None) == __name__
        ]
        self.endpoints = ours


class SchemaView(AccessMixin, SpectacularAPIView):
    generator_class = WFStateSchemaGenerator
    # As on every wfstate view: drf-spectacular's inspector even when the host's
    # DEFAULT_SCHEMA_CLASS is DRF's own (or unset).
    schema: ViewInspector | None = AutoSchema()
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
        return super().get(request, *args, **kwargs)
