"""Load-time checks of ``wait`` and ``sleep`` states (docs/workflows.md, "Waiting").

A ``wait`` names a signal, optionally a JSON Schema its payload must meet, a ``timeout``
and where to go when it expires (``on_timeout``), and the groups that may answer it
(``assignees``). A ``sleep`` has either a ``duration`` or an ``until`` template that
renders to an ISO 8601 time. Both park the run (see :mod:`wfstate.engine.waits`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jsonschema

from wfstate.definitions import templates

__all__ = ["build_wait"]


def build_wait(
    out: Any,
    path: tuple[Any, ...],
    raw: Mapping[str, Any],
    get: Callable[..., Any],
    fields: dict[str, Any],
) -> None:
    """Fill ``fields`` of a wait or sleep state, reporting errors to ``out`` (the
    loader's collector) with the state's file and line."""
    from wfstate.definitions.loader import _duration, _template

    kind = fields["type"]
    if kind == "wait":
        fields["signal"] = get("signal")
        schema = get("schema")
        if schema is not None:
            try:
                jsonschema.Draft202012Validator.check_schema(schema)
            except jsonschema.SchemaError as exc:
                out.error((*path, "schema"), f"invalid payload schema: {exc.message}")
            else:
                fields["schema"] = dict(schema)
        fields["timeout"] = _duration(out, (*path, "timeout"), raw.get("timeout"))
        fields["on_timeout"] = get("on_timeout")
        if fields["on_timeout"] and fields["timeout"] is None:
            out.error((*path, "on_timeout"), "'on_timeout' needs a 'timeout'")
        fields["assignees"] = tuple(str(group) for group in get("assignees", ()))
        return
    has_duration = raw.get("duration") is not None
    has_until = raw.get("until") is not None
    if has_duration == has_until:
        out.error(path, "a sleep needs either 'duration' (like 2h) or 'until' (an ISO time)")
    fields["duration"] = _duration(out, (*path, "duration"), raw.get("duration"))
    until = get("until")
    if until is not None:
        fields["until"] = _template(out, (*path, "until"), str(until), templates.check_text)
