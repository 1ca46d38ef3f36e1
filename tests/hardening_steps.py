"""Python steps for the hardening tests: values that used to crash the executor."""

from __future__ import annotations

from typing import Any


def surrogate(ctx: Any) -> str:
    """A string no UTF-8 document can hold (a lone surrogate)."""
    return "half a pair: \ud800"


def raise_surrogate(ctx: Any) -> None:
    raise ValueError("bad \udcff byte")


def with_nul(ctx: Any) -> str:
    return "a\x00b"


def not_json(ctx: Any) -> dict[Any, Any]:
    return {1: {"set": {1, 2}}}


def echo(ctx: Any, **kwargs: Any) -> dict[str, Any]:
    return kwargs


def exits(ctx: Any) -> None:
    raise SystemExit(7)
