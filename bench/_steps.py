"""The steps the benchmarks call."""

from __future__ import annotations

from typing import Any


def noop(ctx: Any) -> None:
    """A `call` step that does nothing: what is left is the engine's own cost."""
    return None
