"""The API's views: thin faces over ``wfstate.runs`` (see docs/api.md).

Each view parses its request, calls one service function, and formats the result.
Lists read the index (``WorkflowRun``); a run's detail reads its state file. What each
operation documents (summaries, parameters, error responses) is declared in
``wfstate.api.schema`` and attached with one decorator per view class.

Everything but authentication is set here rather than taken from the host's
``REST_FRAMEWORK`` defaults: permissions (``WFSTATE["API_PERMISSION_CLASSES"]``, read
on each request), the bounded JSON parser, the JSON renderer, the error format, the
pagination and the filters. A host whose own API is open or renders differently does
not change what this API promises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.filters import OrderingFilter, SearchFilter
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from wfstate import audit, runs
from wfstate.api import schema
from wfstate.api import serializers as s
from wfstate.api.exceptions import exception_handler
from wfstate.api.filters import RunPagination, WorkflowRunFilter
from wfstate.api.parsers import BoundedJSONParser
from wfstate.api.permissions import AccessMixin
from wfstate.definitions import get_registry
from wfstate.index import search_runs
from wfstate.models import WorkflowRun
from wfstate.state import WorkflowState

# --- the common base ---------------------------------------------------------------------


class WFStateAPIMixin(schema.SchemaMixin, AccessMixin):
    """Policies of every wfstate view (the module docstring says why); ``SchemaMixin``
    is also what puts a view in the served OpenAPI schema."""

    parser_classes: Sequence[type[BaseParser]] = [BoundedJSONParser]
    renderer_classes: Sequence[type[BaseRenderer]] = [JSONRenderer]

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
        final: Response = super().finalize_response(  # type: ignore[misc]
            request, response, *args, **kwargs
        )
        return final


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


@schema.document_runs
class RunViewSet(WFStateAPIMixin, mixins.ListModelMixin, viewsets.GenericViewSet[WorkflowRun]):
    """Runs: the list is DRF's own (``ListModelMixin``: filter, paginate, serialize the
    index rows); the rest is not, because it goes through ``wfstate.runs`` to the state
    file rather than to the index row: a detail, a resume or a delete reads or writes the
    file (a run the index lost is still found), and a start answers 202 with the run, not
    201 with a saved row.
    """

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

    def get_serializer_class(self) -> Any:
        return {
            "create": s.RunCreateSerializer,
            "resume": s.RunResumeSerializer,
            "signal": s.RunSignalSerializer,
        }.get(self.action, s.RunSummarySerializer)

    def _run(self, state: WorkflowState) -> dict[str, Any]:
        document = state.to_dict()
        if state.status == "pending":  # held back by a concurrency limit?
            from wfstate.triggers.concurrency import queue_position

            document["queue_position"] = queue_position(state.workflow_id)
        return dict(s.RunSerializer(document, context=self.get_serializer_context()).data)

    def create(self, request: Request) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        if request.query_params.get("dry_run") in ("1", "true", "yes"):
            plan = runs.plan_run(
                body.validated_data["workflow_name"], body.validated_data["inputs"]
            )
            return Response(plan, status=status.HTTP_200_OK)
        # Idempotency-Key (header, or "idempotency_key" in the body): a retry returns the
        # run the first request created, with 200 instead of 202.
        key = request.headers.get("Idempotency-Key") or body.validated_data.get("idempotency_key")
        started_by = {"kind": "api", "user": request.user.get_username()}
        created: list[WorkflowState] = []
        state = runs.start_run(
            body.validated_data["workflow_name"],
            body.validated_data["inputs"],
            detach=True,
            idempotency_key=key,
            started_by=started_by,
            on_created=created.append,
        )
        data = self._run(state)
        code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
        return Response(data, status=code, headers={"Location": data["url"]})

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

    @action(detail=True, methods=["get"], url_path=r"loops/(?P<loop>[^/]+)")
    def loop(self, request: Request, workflow_id: str, loop: str) -> Response:
        page = s.LoopPageSerializer(data=request.query_params)
        page.is_valid(raise_exception=True)
        data = runs.loop_iterations(workflow_id, loop, **page.validated_data)
        return Response(s.LoopIterationsSerializer(data).data)

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, workflow_id: str) -> Response:
        outcome, state = runs.cancel_run(workflow_id)
        return Response(
            {"outcome": outcome, "run": self._run(state)}, status=status.HTTP_202_ACCEPTED
        )

    @action(detail=True, methods=["post"])
    def signal(self, request: Request, workflow_id: str) -> Response:
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        user = request.user
        record, state = runs.signal_run(
            workflow_id,
            body.validated_data["signal"],
            body.validated_data["payload"],
            sender={
                "kind": "api",
                "user": user.get_username() if user.is_authenticated else None,
                "remote_addr": request.META.get("REMOTE_ADDR"),
            },
        )
        return Response(
            {"signal": record, "run": self._run(state)}, status=status.HTTP_202_ACCEPTED
        )


# --- workflow definitions ----------------------------------------------------------------


@schema.document_workflows
class WorkflowViewSet(WFStateAPIMixin, viewsets.ViewSet):
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def list(self, request: Request) -> Response:
        # Invalid files are listed too (valid: false, with their errors): one bad file
        # never hides, or breaks, the others.
        entries = get_registry().entries()
        return Response(s.WorkflowSerializer(entries, many=True, context={"request": request}).data)

    def retrieve(self, request: Request, name: str) -> Response:
        entry = get_registry().entry(name)
        return Response(s.WorkflowSerializer(entry, context={"request": request}).data)
