"""``GET runs/{id}/steps/{state}/output/``: a step's whole output, or followed live.

Without ``follow``: the whole output as ``text/plain`` (from the state, or its
whole-output side file when the state has it cut). With ``?follow=1``: Server-Sent
Events while the step runs (``wfstate.follow``), ending when the step ends; under
ASGI an async generator, under WSGI a thread per client for at most 5 minutes (like
``runs/{id}/events/``). Errors are JSON whatever the ``Accept`` header.
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpResponse, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from wfstate import events, follow, runs
from wfstate.api import schema
from wfstate.api.exceptions import exception_handler
from wfstate.api.permissions import AccessMixin
from wfstate.api.serializers import ConflictErrorSerializer
from wfstate.stores import get_store

_TRUE = ("1", "true", "yes")


class StepOutputView(schema.SchemaMixin, AccessMixin, APIView):
    """One step's output (SPEC: ``GET runs/{id}/steps/{state}/output/``)."""

    renderer_classes = [JSONRenderer]

    def get_exception_handler(self) -> Any:
        return exception_handler

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # The body is text or an event stream, built below; only errors are rendered.
        return (JSONRenderer(), JSONRenderer.media_type)

    @schema.extend_schema(
        summary="A step's output",
        description=(
            "The step's whole output as text/plain: stdout, or stderr with "
            "`stream=stderr` (a whole-output side file when the state keeps it cut). "
            "With `follow=1`, Server-Sent Events while the step runs: `event: output` "
            '`{"text": ...}` as the step prints lines, `event: attempt` when a retry '
            'starts over, and `event: end` `{"status": ...}` once the step has ended '
            "and the rest of its output was sent. A reconnection starts over from the "
            "attempt's first line."
        ),
        parameters=[
            schema.RUN_ID,
            OpenApiParameter(
                "state", OpenApiTypes.STR, OpenApiParameter.PATH, description="A state's name."
            ),
            OpenApiParameter(
                "stream",
                OpenApiTypes.STR,
                OpenApiParameter.QUERY,
                enum=list(follow.STREAMS),
                description="stdout (the default) or stderr.",
            ),
            OpenApiParameter(
                "follow",
                OpenApiTypes.BOOL,
                OpenApiParameter.QUERY,
                description="Stream it (text/event-stream) until the step ends.",
            ),
        ],
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR),
            (200, "text/event-stream"): OpenApiResponse(OpenApiTypes.STR),
            400: schema.BAD_REQUEST[400],
            **schema.AUTH_ERRORS,
            404: schema._error("No such run, no such state, or a state that has not run."),
            409: schema._error("The run's state file is corrupt.", ConflictErrorSerializer),
            **schema.UNAVAILABLE,
        },
    )
    def get(
        self, request: Request, workflow_id: str, state: str
    ) -> HttpResponse | StreamingHttpResponse:
        which = request.query_params.get("stream") or "stdout"
        if which not in follow.STREAMS:
            raise ValidationError({"stream": ["stdout or stderr."]})
        following = (request.query_params.get("follow") or "").lower() in _TRUE
        run = runs.load_run(workflow_id)  # 404 (or 409 corrupt) before any stream begins
        if not follow.known_step(run, state):
            raise NotFound(f"run {workflow_id} has no state '{state}'")
        store = get_store()
        if not following:
            if state not in run.states:
                raise NotFound(f"state '{state}' of run {workflow_id} has not run")
            text = follow.final_output(store, run, state, which)
            return HttpResponse(text, content_type="text/plain; charset=utf-8")
        connection.close()  # nothing below needs the database: never hold a connection
        content: Any
        if isinstance(request._request, ASGIRequest):
            content = follow.astream(store, workflow_id, state, which)
        else:
            content = follow.stream(store, workflow_id, state, which, events.WSGI_LIFETIME)
        response = StreamingHttpResponse(content, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
        return response
