"""Sync's one-pass projection of a parsed file (``PlainReader.values``) equals the
projection's own functions (``plain_document``, ``project``, ``comparable``), which
``row_fields()`` goes through, over varied documents."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import re
import zoneinfo
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.helpers import make_state
from wfstate import index
from wfstate.index import reader as reader_module
from wfstate.index._table import Values
from wfstate.index.projection import CachedStepCounter
from wfstate.index.reader import PlainReader, _values_apart
from wfstate.state import RunStatus, StepStatus

pytestmark = pytest.mark.usefixtures("wfstate_settings")

TIMES = [
    "2026-11-27T11:00:00Z",
    "2026-11-27T11:00:00.000000Z",
    "2026-11-27T11:00:30.123456Z",
    "2026-11-27T23:59:59.999999+00:00",
    "2026-11-28T01:30:00+02:00",
    "2026-11-27T11:00:30",  # naive
    "2026-02-30T11:00:00Z",  # no such day
    "yesterday",
    "",
    "2026-11-27 11:00:00Z",
    "20261127T110000Z",
    # Forms fromisoformat takes that are not the engine's (no string shortcut for them).
    "2026-W48-5T11:00:00.000000Z",
    "2026-11-27T11:00:00,123456Z",
    "2026-11-27x11:00:00.000000Z",
    "2026-11-27 11:00:00.500000Z",
    "2026-11-27T11:00:00.000000+00:00",
    "2026-11-27T11:00:00.000001Z",
    "2026-11-27T11:00:00.100000Z",
    "2026-11-27T24:00:00.000000Z",
    "2026-11-27T11:00:60.000000Z",
    "2026-11-27T11:00:00.000000z",
    "\uff12\uff10\uff12\uff16-11-27T11:00:00.000000Z",  # full-width digits
]
ODD = [None, 0, 1, True, 2.5, "", "x", [], {}, ["a"], {"a": 1}, "a\x00b", "é" * 600]


def _base() -> dict[str, Any]:
    state = make_state(
        "demo", RunStatus.FAILED, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.FAILED}
    )
    state.revision = 3
    document: dict[str, Any] = json.loads(json.dumps(state.to_dict()))
    return document


def _documents(base: dict[str, Any], seed: int, count: int) -> Iterator[Any]:
    """``base``, then ``count`` variants of it with one to four random changes."""
    rng = random.Random(seed)
    yield base
    keys = [*base, "error"]
    step_keys = ["name", "status", "attempt", "error", "output", "started_at"]
    step_statuses = [str(s) for s in StepStatus] + ["great", None, 1]
    for _ in range(count):
        document = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            roll = rng.random()
            if roll < 0.25:  # a time
                key = rng.choice(["started_at", "updated_at", "completed_at"])
                document[key] = rng.choice([*TIMES, None, 5])
            elif roll < 0.35:
                document["status"] = rng.choice([*(str(s) for s in RunStatus), "sleeping", 3])
            elif roll < 0.45:
                document["revision"] = rng.choice(
                    [0, 1, -1, True, "4", None, 2.0, index.REVISION_MAX, index.REVISION_MAX + 1]
                )
            elif roll < 0.55:
                key = rng.choice(["workflow_name", "workflow_version", "current_state", "error"])
                document[key] = rng.choice([*ODD, "n" * 200, "with\x00nul", "  spaced  "])
            elif roll < 0.75:  # a step
                states = document.get("states")
                if type(states) is not dict:
                    states = document["states"] = {}
                name = rng.choice(["greet", "prepare", "new"])
                step = states.setdefault(name, {"name": name})
                if type(step) is dict:
                    key = rng.choice(step_keys)
                    if rng.random() < 0.2:
                        step.pop(key, None)
                    elif key == "status":
                        step[key] = rng.choice(step_statuses)
                    elif key == "error":
                        step[key] = rng.choice(["boom", "", None, "x" * 700, 7, ["e"]])
                    else:
                        step[key] = rng.choice(ODD)
            elif roll < 0.8:
                document["states"] = rng.choice([None, {}, [], {"greet": "done"}])
            elif roll < 0.9:
                key = rng.choice(keys)
                if rng.random() < 0.5:
                    document.pop(key, None)
                else:
                    document[key] = rng.choice(ODD)
            elif roll < 0.95:
                document["schema_version"] = rng.choice([1, 2, 3, True, "2", 2.0])
            else:
                document["workflow_id"] = rng.choice(["00000000-0000-4000-8000-000000000000", None])
        yield document if rng.random() > 0.01 else [document]


def _mismatches(
    values: Callable[[PlainReader, Any, str], Values | None], reader: PlainReader
) -> list[tuple[Any, Values | None, Values | None]]:
    out = []
    plain = 0
    base = _base()
    workflow_id = base["workflow_id"]  # the file's run (a few documents name another)
    for document in _documents(base, seed=15, count=3000):
        want = _values_apart(reader, document, workflow_id)
        got = values(reader, document, workflow_id)
        plain += want is not None
        if got != want or [type(v) for v in got or ()] != [type(v) for v in want or ()]:
            out.append((document, got, want))
    assert plain > 300, "too few documents took the projection: the test proves little"
    return out


def _readers(use_tz: bool) -> Iterator[PlainReader]:
    for text_times in (True, False):
        for tz in (dt.UTC, zoneinfo.ZoneInfo("UTC"), zoneinfo.ZoneInfo("Europe/Paris")):
            yield PlainReader(lambda _: None, CachedStepCounter(), text_times, tz, use_tz)


@pytest.mark.parametrize("use_tz", [True, False])
def test_one_pass_projection_equals_the_projections_functions(use_tz: bool) -> None:
    for reader in _readers(use_tz):
        assert _mismatches(PlainReader.values, reader) == []


def test_the_comparison_catches_a_projection_that_differs() -> None:
    """The control: a one-pass projection off by one millisecond in a duration, or one
    that takes a non-plain document, is caught."""

    def off_by_one(reader: PlainReader, document: Any, workflow_id: str) -> Values | None:
        values = PlainReader.values(reader, document, workflow_id)
        if values is None or values[7] is None:
            return values
        return (*values[:7], values[7] + 1, *values[8:])

    def too_lenient(reader: PlainReader, document: Any, workflow_id: str) -> Values | None:
        values = PlainReader.values(reader, document, workflow_id)
        if values is None and isinstance(document, dict) and document.get("status") == 3:
            return PlainReader.values(reader, {**document, "status": "running"}, workflow_id)
        return values

    reader = next(_readers(True))
    assert _mismatches(off_by_one, reader)
    assert _mismatches(too_lenient, reader)


def test_the_comparison_catches_a_time_shortcut_taken_too_widely(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control of the string shortcut for times: taken for any 27 characters (a week
    date, a comma before the fraction), the text differs from the datetime's."""
    monkeypatch.setattr(reader_module, "_UTC_TIME", re.compile(r".{26}Z"))
    reader = next(_readers(True))
    assert reader.tz_utc and reader.text_times
    assert _mismatches(PlainReader.values, reader)
