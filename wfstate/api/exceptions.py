"""The one place where errors become HTTP responses.

Every error the API returns has the same DRF-shaped body::

    {"detail": "human readable message", "code": "stable_machine_code"}

plus ``errors`` (field name -> messages) on 400 validation errors and ``owner`` on
409 ``run_locked``. The views return :func:`exception_handler` from
``get_exception_handler()``, so this holds even when the host project configures
another ``EXCEPTION_HANDLER`` (or none).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from wfstate import exceptions as wf
from wfstate.records import DefinitionProblem

# WFStateError subclass -> HTTP status. The most specific class in an error's MRO wins,
# so e.g. ``InvalidRunId`` (a ``RunNotFound``) is a 404 and ``RunLocked`` (a
# ``StateLocked``) a 409. Anything not listed here (``ConfigurationError``, the root
# class) is a server error: 500 with its code, never a traceback.
STATUS_BY_ERROR: dict[type[wf.WFStateError], int] = {
    wf.RunNotFound: status.HTTP_404_NOT_FOUND,
    wf.WorkflowNotFound: status.HTTP_404_NOT_FOUND,
    wf.InvalidInputs: status.HTTP_400_BAD_REQUEST,
    wf.InvalidSignal: status.HTTP_400_BAD_REQUEST,
    wf.SignalRefused: status.HTTP_409_CONFLICT,
    wf.NotResumable: status.HTTP_409_CONFLICT,
    wf.RunFinished: status.HTTP_409_CONFLICT,
    wf.StillRunning: status.HTTP_409_CONFLICT,
    wf.IdempotencyConflict: status.HTTP_409_CONFLICT,
    wf.StateLocked: status.HTTP_409_CONFLICT,
    # A corrupt file is a fact about the stored run, not about the request: the client
    # cannot fix it by retrying, an operator can (``doctor --fix``). 409, not 500.
    wf.CorruptState: status.HTTP_409_CONFLICT,
    # The run's definition on the server no longer loads: a conflict with the server's
    # current state of definitions, not a bad request.
    wf.InvalidDefinition: status.HTTP_409_CONFLICT,
    wf.TemplateError: status.HTTP_409_CONFLICT,
    # Disk or filesystem trouble is usually transient (full disk, NFS hiccup).
    wf.StorageError: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def status_for(exc: wf.WFStateError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return status.HTTP_500_INTERNAL_SERVER_ERROR


class WFStateAPIError(exceptions.APIException):
    """A ``WFStateError`` carried through DRF's exception handling."""

    def __init__(self, error: wf.WFStateError) -> None:
        self.error = error
        self.status_code = status_for(error)
        super().__init__(detail=str(error) or error.code, code=error.code)


class RequestTooLarge(exceptions.ParseError):
    default_detail = _("Request body too large.")
    default_code = "request_too_large"


class RequestTooDeep(exceptions.ParseError):
    default_detail = _("Request body nested too deeply.")
    default_code = "request_too_deep"


def _code_of(exc: exceptions.APIException) -> str:
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def error_body(exc: exceptions.APIException) -> dict[str, Any]:
    """The response body of ``exc`` in the API's one error format."""
    if isinstance(exc, WFStateAPIError):
        # The error's own JSON (as the commands print it), in the API's one error format:
        # field errors nested by field, definition problems as readable lines, and no
        # server paths (``path``) or setting names sent to clients.
        error = exc.error.as_dict()
        body: dict[str, Any] = {"detail": str(exc.detail), "code": error["code"]}
        if isinstance(exc.error, wf.InvalidInputs):
            inputs = exc.error.errors
            body["errors"] = {"inputs": {k: [str(m) for m in v] for k, v in inputs.items()}}
        elif isinstance(exc.error, wf.InvalidDefinition):
            body["errors"] = {"definition": [_describe(e) for e in exc.error.errors]}
        if "owner" in error:
            body["owner"] = error["owner"]
        return body
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        errors = detail if isinstance(detail, dict) else {"non_field_errors": detail}
        return {"detail": str(_("Invalid input.")), "code": "invalid", "errors": errors}
    return {"detail": str(exc.detail), "code": _code_of(exc)}


def _describe(error: DefinitionProblem) -> str:
    where = ":".join(str(v) for v in (error["file"], error["line"]) if v)
    state = f" state {error['state']}" if error["state"] else ""
    return f"{where}{state}: {error['message']}".strip(": ")


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF exception handler of the wfstate views (see the module docstring).

    Returns None for anything that is not an API, Django 404/403 or wfstate error, so
    DRF re-raises it as a genuine server error.
    """
    if isinstance(exc, wf.WFStateError):
        exc = WFStateAPIError(exc)
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None

    headers: dict[str, str] = {}
    auth_header = getattr(exc, "auth_header", None)
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = f"{int(wait)}"
    set_rollback()
    return Response(error_body(exc), status=exc.status_code, headers=headers)
