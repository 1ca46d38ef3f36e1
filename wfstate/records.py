"""Typed records that cross layers: who holds a run, what an error says.

Plain ``TypedDict``s (JSON-able as they are): the store writes a :class:`RunLockOwner`
into a run lock and reads it back, the exceptions carry it, the API and the commands
print it. Importable without Django and without the rest of wfstate.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class RunLockOwner(TypedDict):
    """Who executes a run: recorded in its run lock, so "locked by pid 4121 on web-2
    since 11:03" can be said."""

    pid: int
    host: str
    since: str  # UTC ISO 8601, when the lock was taken


def owner_from(data: object) -> RunLockOwner | None:
    """A :class:`RunLockOwner` from what a lock holds (JSON read back), or None when it
    is not one (an empty, torn or foreign record)."""
    if not isinstance(data, dict):
        return None
    pid, host, since = data.get("pid"), data.get("host"), data.get("since")
    if not isinstance(pid, int) or isinstance(pid, bool) or not isinstance(host, str):
        return None
    return {"pid": pid, "host": host, "since": since if isinstance(since, str) else ""}


def unknown_owner() -> RunLockOwner:
    """A run lock that is held by a holder that has not said who it is (yet)."""
    return {"pid": 0, "host": "", "since": ""}


class DefinitionProblem(TypedDict):
    """One error found in a workflow file (``InvalidDefinition.errors``)."""

    file: str
    line: int  # 0 when the problem has no line (a file that is not YAML, a duplicate name)
    state: str | None
    message: str


class ErrorDict(TypedDict):
    """An error as JSON (``WFStateError.as_dict()``): what the API answers and what the
    commands print with ``--json``. The optional keys are those of the error's class."""

    code: str
    detail: str
    # InvalidInputs: {input: [messages]}; InvalidDefinition: [DefinitionProblem]
    errors: NotRequired[Any]
    owner: NotRequired[RunLockOwner | None]  # RunLocked
    path: NotRequired[str]  # CorruptState
    setting: NotRequired[str]  # ConfigurationError
