"""Template tags of the run page for what started a run and its place in a queue."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.simple_tag
def queue_position(workflow_id: str) -> int | None:
    """A pending run's place in its concurrency queue (1 = next), or None."""
    from wfstate.triggers.concurrency import queue_position as position

    found = position(workflow_id)
    return None if found is None else found + 1


@register.filter
def started_by_items(started_by: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """``started_by`` as rows, ``kind`` first."""
    if not started_by:
        return []
    return sorted(started_by.items(), key=lambda item: (item[0] != "kind", item[0]))
