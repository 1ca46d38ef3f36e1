"""``type: operation`` steps: named Python operations found by entry point.

An operation is a callable ``op(ctx, **inputs) -> JSON-able`` (the signature of a
``call`` step) registered under the entry point group ``wfstate.operations``::

    [project.entry-points."wfstate.operations"]
    "myapp.deploy" = "myapp.ops:deploy"

wfstate ships two, declared the same way in its own ``pyproject.toml``:
``http.request`` (an HTTP request with httpx, the ``http`` extra) and ``notify.log``
(a line in the ``wfstate.notify`` logger). They are also known without the package's
metadata (a source checkout), so a definition that uses them always loads.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "wfstate.operations"

BUILTIN_OPERATIONS = {
    "http.request": "wfstate.engine.operations.http_request",
    "notify.log": "wfstate.engine.operations.notify_log",
}

logger = logging.getLogger("wfstate.operations")
notify_logger = logging.getLogger("wfstate.notify")


@functools.cache
def available_operations() -> dict[str, str]:
    """Operation name -> dotted path of its callable (built-ins, then entry points)."""
    found = dict(BUILTIN_OPERATIONS)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found[point.name] = point.value.replace(":", ".")
    return found


def operation_target(name: str) -> str:
    """The dotted path of operation ``name``.

    Raises:
        KeyError: no such operation is registered.
    """
    return available_operations()[name]


# --- the operations wfstate ships ---------------------------------------------------------


def http_request(
    ctx: Any,
    *,
    url: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    json: Any = None,
    body: str | None = None,
    timeout: float = 30.0,
    expect_status: list[int] | None = None,
) -> dict[str, Any]:
    """One HTTP request; the step's output is ``{status, headers, body, json}``.

    The step fails on a transport error, or on a status outside ``expect_status``
    (default: any 2xx).

    Raises:
        RuntimeError: httpx is not installed, or the status is not expected.
        httpx.HTTPError: the request could not be made.
    """
    try:
        import httpx
    except ImportError:  # pragma: no cover - the dev extra installs it
        raise RuntimeError(
            "the http.request operation needs httpx: pip install 'wfstate[http]'"
        ) from None
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        response = client.request(
            method.upper(), url, headers=headers, params=params, json=json, content=body
        )
    ok = response.status_code in expect_status if expect_status else response.is_success
    try:
        data = response.json()
    except ValueError:
        data = None
    result = {
        "status": response.status_code,
        "headers": dict(response.headers),
        "body": response.text,
        "json": data,
    }
    if not ok:
        raise RuntimeError(f"{method.upper()} {url} answered {response.status_code}")
    return result


def notify_log(ctx: Any, *, message: str, level: str = "info") -> dict[str, Any]:
    """Log ``message`` to the ``wfstate.notify`` logger; the output echoes it.

    Raises:
        ValueError: ``level`` is not a logging level name.
    """
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}")
    notify_logger.log(number, "[%s %s] %s", ctx.workflow_name, ctx.workflow_id, message)
    return {"message": message, "level": level.lower()}
