"""THE projection: a run's row columns from its state document alone (docs/admin.md).

Imported by the API's serializers (``ROW_FIELDS``) and by the forked reader of a sync,
so it stays light: no threads, no multiprocessing, no database access.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.utils import timezone

from wfstate.models import RunStatusChoices

# REVISION_MAX: a file outside it is outside the document's contract (docs/state-file.md):
# reported corrupt, never clamped. The raw reader of ``sync`` meets such files unparsed.
from wfstate.state import (
    REVISION_MAX,
    SCHEMA_VERSION,
    RunStatus,
    StepStatus,
    WorkflowState,
    parse_time,
)

# The error summary kept in a row; the whole error and traceback stay in the file.
ERROR_SUMMARY_CHARS = 500

# Columns a sync writes (everything but the primary key and ``indexed_at``, which
# ``bulk_create`` fills from ``auto_now`` on insert and we set ourselves on update).
ROW_FIELDS = (
    "workflow_name",
    "workflow_version",
    "status",
    "current_state",
    "started_at",
    "updated_at",
    "completed_at",
    "duration_ms",
    "steps_done",
    "steps_total",
    "revision",
    "error",
    "corrupt",
)

StepCounter = Callable[[str], "int | None"]


def definition_step_count(workflow_name: str) -> int | None:
    """How many non-terminal states the workflow's current definition has, or None.

    Used as a run's ``steps_total`` while it runs. A missing or invalid definition is
    not an error here: the run's own states are counted instead.
    """
    try:
        from wfstate.definitions import get_registry

        definition = get_registry().get(workflow_name)
    except Exception:  # no registry yet, unknown or invalid definition
        return None
    return sum(1 for s in definition.states.values() if s.type != "terminal")


class CachedStepCounter:
    """``definition_step_count`` remembered per workflow name for one sync or listener."""

    def __init__(self) -> None:
        self._counts: dict[str, int | None] = {}

    def __call__(self, workflow_name: str) -> int | None:
        try:
            return self._counts[workflow_name]
        except KeyError:
            count = self._counts[workflow_name] = definition_step_count(workflow_name)
            return count


def _text(value: str, limit: int) -> str:
    """``value`` as a text column holds it: without NUL characters (PostgreSQL refuses
    them in text, and a step's stderr may hold one), cut to the column's length."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value[:limit]


def _summary(text: str | None) -> str:
    if not text:
        return ""
    text = str(text).replace("\x00", "").strip()
    if len(text) > ERROR_SUMMARY_CHARS:
        return text[: ERROR_SUMMARY_CHARS - 1] + "…"
    return text


_DONE = frozenset({"completed", "failed", "skipped"})
_FINAL = frozenset({"completed", "failed", "cancelled"})
RUN_STATUSES = frozenset(str(s) for s in RunStatus)
STEP_STATUSES = frozenset(str(s) for s in StepStatus)


def project(document: Mapping[str, Any], step_count: StepCounter | None = None) -> dict[str, Any]:
    """The columns of a run's row, from its state document alone: THE projection.

    ``document`` is a state as ``WorkflowState.to_dict()`` shapes it (the step results
    may be any mapping with the ``StepResult`` fields). :func:`row_fields` projects a
    loaded state through this function, and ``sync`` projects a parsed file through it
    directly, so the two can never disagree.

    ``steps_total`` is the definition's number of non-terminal states while the run is
    live (at least the states the run reached), and the states the run reached once it
    is final, so a finished run's progress bar reads what it did, not what it skipped.
    Times are aware with ``USE_TZ``, else naive in ``TIME_ZONE`` (what Django stores).
    Text columns never hold a NUL character. (Written for speed: ``sync`` calls it for
    every file.)

    Raises:
        ValueError: the revision is outside 0..``REVISION_MAX`` or a time is not ISO 8601.
        TypeError, AttributeError, OverflowError: other nonsense in a document that
            parsed (naive and aware times mixed, a name that is not text).
    """
    steps = document.get("states") or {}
    reached = len(steps)
    done = 0
    failed = ""  # the first failed step's error
    for step in steps.values():
        step_status = step.get("status", "running")
        if step_status in _DONE:
            done += 1
            if step_status == "failed" and not failed and step.get("error"):
                failed = f"{step['name']}: {step['error']}"
    status = str(document["status"])
    name = document["workflow_name"]
    revision = document.get("revision") or 0
    if not 0 <= revision <= REVISION_MAX:
        raise ValueError(f"revision {revision} is outside 0..{REVISION_MAX}")
    if status in _FINAL:
        total = reached
    else:
        total = max((step_count or definition_step_count)(name) or 0, reached)
    started = parse_time(document.get("started_at"))
    updated = parse_time(document.get("updated_at"))
    completed = parse_time(document.get("completed_at"))
    end = completed or updated
    duration = int((end - started).total_seconds() * 1000) if started and end else None
    if not settings.USE_TZ:
        # Naive in TIME_ZONE, as Django writes and reads them without time zone support.
        tz = timezone.get_default_timezone()
        started, updated, completed = (
            None if t is None else timezone.make_naive(t, tz) for t in (started, updated, completed)
        )
    error = document.get("error")
    return {
        "workflow_name": _text(name, 128),
        "workflow_version": _text(document.get("workflow_version") or "", 64),
        "status": status,
        "current_state": _text(document.get("current_state") or "", 128),
        "started_at": started,
        "updated_at": updated,
        "completed_at": completed,
        "duration_ms": duration,
        "steps_done": done,
        "steps_total": max(total, done),
        "revision": revision,
        "error": _summary(error) if error else _summary(failed),
        "corrupt": False,
    }


def _document(state: WorkflowState) -> dict[str, Any]:
    """``state.to_dict()`` without copying the step results (their fields are read as is)."""
    document = state.shallow_dict()
    document["states"] = {name: vars(step) for name, step in state.states.items()}
    return document


def row_fields(state: WorkflowState, step_count: StepCounter | None = None) -> dict[str, Any]:
    """The columns of a run's row, computed from its state alone (see :func:`project`).

    Raises:
        ValueError, TypeError, AttributeError, OverflowError: as :func:`project`.
    """
    return project(_document(state), step_count)


def error_summary(state: WorkflowState) -> str:
    """The run's error, else the first failed step's, cut to a summary.

    Raises:
        ValueError, TypeError, AttributeError, OverflowError: as :func:`project`.
    """
    return str(row_fields(state, lambda name: None)["error"])


def plain_document(document: Any, workflow_id: str) -> bool:
    """Whether a parsed file is a current, well-typed state document of ``workflow_id``.

    For such a document ``WorkflowState.from_dict()`` succeeds and changes nothing that
    :func:`project` reads, so projecting the document is projecting the loaded state.
    Anything else (an older schema, a missing or odd-typed key, another run's id) is
    left to the store's own parser, which upgrades it or says precisely what is wrong.
    """
    if type(document) is not dict:
        return False
    get = document.get
    version = get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return False
    if get("workflow_id") != workflow_id or type(get("workflow_name")) is not str:
        return False
    if type(get("status")) is not str or get("status") not in RUN_STATUSES:
        return False
    started, updated = get("started_at"), get("updated_at")
    if type(started) is not str or type(updated) is not str or not started or not updated:
        return False
    revision = get("revision")
    if type(revision) is not int or revision < 0:
        return False
    for key in ("workflow_version", "current_state", "completed_at"):
        value = get(key)
        if value is not None and type(value) is not str:
            return False
    inputs, history, states = get("inputs"), get("history"), get("states")
    if inputs is not None and type(inputs) is not dict:
        return False
    if history is not None and type(history) is not list:
        return False
    if states is None:
        return True
    if type(states) is not dict:
        return False
    for step in states.values():
        if type(step) is not dict or "name" not in step:
            return False
        step_status = step.get("status", "running")
        if type(step_status) is not str or step_status not in STEP_STATUSES:
            return False
        attempt = step.get("attempt")
        if attempt is not None and type(attempt) is not int:
            return False
    return True


def corrupt_fields(error: BaseException | str) -> dict[str, Any]:
    """The columns that flag a run's file as corrupt (other columns are kept)."""
    return {"status": RunStatusChoices.CORRUPT, "corrupt": True, "error": _summary(str(error))}
