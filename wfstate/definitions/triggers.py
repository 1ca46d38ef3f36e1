"""Building the workflow keys that decide *when* runs start: ``schedule:`` and ``concurrency:``.

The JSON Schema checks their shape; this checks what a schema cannot (a cron expression
that parses, a time zone that exists, a key template that compiles) and reports each
error with the file and line like every other definition error.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Mapping
from typing import Any, cast

from cronsim import CronSim, CronSimError

from wfstate.definitions import awf, templates
from wfstate.definitions.model import ConcurrencyDef, ScheduleDef
from wfstate.exceptions import TemplateError

# The shortest period ``every:`` accepts: a tick is a database row.
MIN_EVERY = 1.0


def check_cron(expression: str) -> None:
    """Raises: ValueError naming what is wrong with a five-field cron expression."""
    from datetime import UTC, datetime

    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(f"cron expression {expression!r} is not valid: {exc}") from None


def check_timezone(name: str) -> None:
    """Raises: ValueError when ``name`` is not an IANA time zone known here."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"time zone {name!r} is unknown (an IANA name, e.g. Europe/Paris)"
        ) from None


def build_schedules(out: Any, workflow: str, raw: Any) -> tuple[ScheduleDef, ...]:
    """The ``schedule:`` list; errors go to the loader's collector ``out``."""
    from wfstate.definitions.loader import parse_duration

    if not isinstance(raw, list):
        return ()  # absent (the schema reported any other shape)
    built: list[ScheduleDef] = []
    names: set[str] = set()
    for index, item in enumerate(raw):
        path = ("schedule", index)
        if not isinstance(item, Mapping):
            continue
        name = str(item.get("name") or f"{workflow}-{index + 1}")
        if name in names:
            out.error((*path, "name"), f"schedule '{name}' is declared twice")
        names.add(name)
        cron = item.get("cron")
        every: float | None = None
        if isinstance(cron, str):
            try:
                check_cron(cron)
            except ValueError as exc:
                out.error((*path, "cron"), str(exc))
        if item.get("every") is not None:
            try:
                every = parse_duration(item["every"])
            except ValueError as exc:
                out.error((*path, "every"), str(exc))
            else:
                if every < MIN_EVERY:
                    out.error((*path, "every"), f"every: {item['every']} is shorter than 1s")
        timezone = str(item.get("timezone") or "UTC")
        try:
            check_timezone(timezone)
        except ValueError as exc:
            out.error((*path, "timezone"), str(exc))
        inputs = item.get("inputs") or {}
        catch_up = item.get("catch_up") or "latest"
        built.append(
            ScheduleDef(
                name=name,
                cron=cron if isinstance(cron, str) else "",
                every=every,
                timezone=timezone,
                inputs=dict(inputs) if isinstance(inputs, Mapping) else {},
                catch_up=cast("Any", catch_up),
                enabled=bool(item.get("enabled", True)),
            )
        )
    return tuple(built)


def build_concurrency(out: Any, raw: Any) -> ConcurrencyDef | None:
    """The ``concurrency:`` mapping; errors go to the loader's collector ``out``."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("limit"), int):
        return None  # absent (the schema reported any other shape)
    key = raw.get("key") or ""
    if not isinstance(key, str):
        return None
    key = awf.normalise_template(key)
    try:
        templates.check_text(key)
    except TemplateError as exc:
        out.error(("concurrency", "key"), str(exc))
    return ConcurrencyDef(
        limit=int(raw["limit"]), key=key, on_limit=cast("Any", raw.get("on_limit") or "queue")
    )
