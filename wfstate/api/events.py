"""``GET runs/{id}/events/``: the run's checkpoints as Server-Sent Events.

``id:`` is the revision, so a client that reconnects with ``Last-Event-ID`` misses
none; ``event: checkpoint`` carries the revision, status, current state and the steps
that changed; ``event: end`` closes the stream with the final status; a comment every
15 s keeps proxies from closing an idle stream. The database connection is closed
before streaming. Under ASGI the stream is an async generator (no thread held between
polls); under WSGI it holds a thread per client, so it ends after 5 minutes and the
client reconnects (docs/operations.md says how to size a WSGI server for it).
"""

from __future__ import annotations

from typing import Any

from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import StreamingHttpResponse
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

from wfstate import events
from wfstate.api.exceptions import exception_handler
from wfstate.api.permissions import AccessMixin
from wfstate.stores import get_store


class EventStreamRenderer(BaseRenderer):
    """Lets ``Accept: text/event-stream`` through; an error is sent as one SSE event."""

    media_type = "text/event-stream"
    format = "sse"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> bytes:
        return b"event: error\ndata: " + JSONRenderer().render(data) + b"\n\n"


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query_params.get("last_event_id") or "0"
    try:
        return max(int(raw), 0)
    except ValueError:
        return 0


class RunEventsView(AccessMixin, APIView):
    """The live progress of one run (SPEC §11)."""

    renderer_classes = [JSONRenderer, EventStreamRenderer]
    schema = None  # a stream, not a JSON operation: left out of the OpenAPI schema

    def get_exception_handler(self) -> Any:
        return exception_handler

    def get(self, request: Request, workflow_id: str) -> StreamingHttpResponse:
        store = get_store()
        store.load(workflow_id)  # 404 (or 409 corrupt) before the stream begins
        last_id = _last_event_id(request)
        connection.close()  # nothing below needs the database: never hold a connection
        content: Any
        if isinstance(request._request, ASGIRequest):
            content = events.astream(store, workflow_id, last_id)
        else:
            content = events.stream(store, workflow_id, last_id, events.WSGI_LIFETIME)
        response = StreamingHttpResponse(content, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
        return response
