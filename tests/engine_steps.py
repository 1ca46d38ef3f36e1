"""Python steps used by the engine tests' workflows."""

from __future__ import annotations

import time
from typing import Any

import orjson

from wfstate.stores import get_store


def nap(ctx: Any, seconds: float) -> dict[str, float]:
    start = time.time()
    time.sleep(seconds)
    return {"start": start, "end": time.time()}


def look_at_own_file(ctx: Any) -> dict[str, Any]:
    """Reads the run's state file from inside the step: it must name this step in flight."""
    path = get_store().path_for(ctx.workflow_id)  # type: ignore[attr-defined]
    doc = orjson.loads(path.read_bytes())
    return {
        "current_state": doc["current_state"],
        "my_status": doc["states"][ctx.state_name]["status"],
        "revision": doc["revision"],
    }


def noop(ctx: Any) -> None:
    return None
