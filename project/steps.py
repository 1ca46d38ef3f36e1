"""Python steps of the demo workflows: ``def step(ctx, **with_kwargs) -> JSON-able``."""

from __future__ import annotations

from typing import Any


def prepare(ctx: Any, who: str) -> dict[str, Any]:
    ctx.logger.info("preparing a greeting for %s", who)
    return {"greeting": f"Hello-{who.replace(' ', '-')}", "words": who.split()}


def flaky(ctx: Any, failures: int) -> dict[str, int]:
    """Fails on its first ``failures`` attempts: the retry policy takes it from there."""
    if ctx.attempt <= failures:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt} (fails {failures} times)")
    return {"attempts": ctx.attempt}


def report(ctx: Any) -> dict[str, Any]:
    letters = int(str(ctx.states["count_letters"]["output"]).strip() or 0)
    return {"ok": letters > 0, "letters": letters, "flaky_attempts": ctx.states["flaky"]["attempt"]}
