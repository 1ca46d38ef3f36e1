"""Small text formatters shared by the faces (admin, commands): durations and JSON.

Kept apart from ``wfstate.graph`` so that a command printing a duration does not
import the SVG drawing code, and so both faces print a duration the same way.
"""

from __future__ import annotations

from typing import Any

import orjson


def human_duration(ms: int | float | None) -> str:
    """``850 ms``, ``3.7 s``, ``2 min 05 s``, ``1 h 02 min``; empty for None.

    Raises:
        TypeError, ValueError: ``ms`` is not a number (``int()`` refuses it).
    """
    if ms is None:
        return ""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def pretty_json(value: Any) -> str:
    """``value`` for reading: a string as it is, anything else as indented JSON with sorted
    keys (``repr`` when it is not JSON-able), nothing for None. Never raises."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return repr(value)
