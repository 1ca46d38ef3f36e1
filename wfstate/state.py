"""The state document of a run (docs/state-file.md) as typed dataclasses.

``WorkflowState.to_dict()`` produces the JSON document with keys in a fixed order, so a
diff between two revisions shows only what changed; ``WorkflowState.from_dict()``
accepts any older ``schema_version`` and upgrades it first. Times are kept as the ISO
8601 strings the file holds (``2026-11-27T11:00:00.123456Z``): the file is the truth
and converting back and forth on every checkpoint would only cost time.

This module knows nothing of Django.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from operator import attrgetter, is_not, ne, or_
from typing import Any

SCHEMA_VERSION = 2

# A revision counts a file's writes from 0; no run writes two billion checkpoints, and
# the index keeps it in a 32-bit column. A document outside this range is not a state
# document (``from_dict`` refuses it, so the store reports the file corrupt).
REVISION_MAX = 2**31 - 1


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Parked on a wait or sleep step: no process holds the run (see engine/waits.py).
    WAITING = "waiting"

    @property
    def is_final(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class StepStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    WAITING = "waiting"


# (second, its "YYYY-MM-DDTHH:MM:SS"): every checkpoint stamps the time, and formatting
# the date part once a second instead of every call makes utcnow() five times cheaper.
_last_second: tuple[int, str] = (-1, "")


def utcnow() -> str:
    """The current time as the state file writes it: UTC, ISO 8601, ``Z``."""
    global _last_second
    ns = time.time_ns()
    second = ns // 1_000_000_000
    last = _last_second
    if last[0] != second:
        last = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{last[1]}.{ns // 1000 % 1_000_000:06d}Z"


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def new_workflow_id() -> str:
    return str(uuid.uuid4())


# The file store's serializer keeps each finished step's encoded bytes here, by
# ``id(step)`` (wfstate.stores._serialize, docs/performance.md). A StepResult drops its
# entry whenever one of its attributes is set or deleted, so an entry always describes
# the step as it is now: a checkpoint reuses a finished step's bytes after one dict
# lookup, where comparing the step with a copy of it cost about what encoding it did.
# Only steps whose values are all immutable are entered (a change in place of a
# container does not pass through ``__setattr__``).
STEP_ENCODINGS: dict[int, Any] = {}
_forget_encoding = STEP_ENCODINGS.pop
# How many entries were dropped so (a change to a step whose bytes were kept): the
# serializer reuses a run of steps' bytes in one piece while this has not moved.
ENCODINGS_DROPPED = [0]


@dataclass
class StepResult:
    """One state's result: the last attempt of a step, or a parallel block's summary."""

    name: str
    status: StepStatus = StepStatus.RUNNING
    output: Any = None
    stderr: str | None = None
    exit_code: int | None = None
    attempt: int = 1
    error: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    duration_ms: int | None = None
    output_truncated: bool = False
    traceback: str | None = None
    # While a command step runs: how to find its process group again if the executor
    # dies (pgid, pid, start_time, boot_id, host, token; see wfstate.engine.processes).
    # Cleared when the step ends.
    process: dict[str, Any] | None = None
    # A for_each / while loop's progress (wfstate.engine.loops): its side file, how many
    # of its records the document acknowledges, the iterations in flight. None otherwise.
    loop: dict[str, Any] | None = None
    # A call_workflow step: the child run's id, recorded before the child starts.
    child_run_id: str | None = None
    # The step's pre/post hooks, as they ran (see wfstate.engine.hooks).
    hooks: dict[str, Any] | None = None
    # A wait step's signal, once taken (see wfstate.engine.waits): its name, the id of
    # the mailbox file it came from (how a crash never applies it twice), its payload,
    # who sent it from where, and when it was received.
    signal: str | None = None
    signal_id: str | None = None
    payload: Any = None
    sender: dict[str, Any] | None = None
    received_at: str | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if _forget_encoding(id(self), None) is not None:
            ENCODINGS_DROPPED[0] += 1

    def __delattr__(self, name: str) -> None:
        object.__delattr__(self, name)
        if _forget_encoding(id(self), None) is not None:
            ENCODINGS_DROPPED[0] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "output": self.output,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "attempt": self.attempt,
            "error": self.error,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "duration_ms": self.duration_ms,
            "output_truncated": self.output_truncated,
            "traceback": self.traceback,
            "process": self.process,
            "loop": self.loop,
            "child_run_id": self.child_run_id,
            "hooks": self.hooks,
            "signal": self.signal,
            "signal_id": self.signal_id,
            "payload": self.payload,
            "sender": self.sender,
            "received_at": self.received_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepResult:
        # Filled in place, in field order (the order the file is written in), without
        # the generated __init__: its 21 assignments would each go through __setattr__.
        step = cls.__new__(cls)
        step.__dict__.update(
            name=data["name"],
            status=StepStatus(data.get("status", "running")),
            output=data.get("output"),
            stderr=data.get("stderr"),
            exit_code=data.get("exit_code"),
            attempt=int(data.get("attempt") or 1),
            error=data.get("error"),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            duration_ms=data.get("duration_ms"),
            output_truncated=bool(data.get("output_truncated", False)),
            traceback=data.get("traceback"),
            process=data.get("process"),
            loop=data.get("loop"),
            child_run_id=data.get("child_run_id"),
            hooks=data.get("hooks"),
            signal=data.get("signal"),
            signal_id=data.get("signal_id"),
            payload=data.get("payload"),
            sender=data.get("sender"),
            received_at=data.get("received_at"),
        )
        return step


# What a step's watchers compare by default: its status, attempt and end.
_WATCH_KEY = attrgetter("status", "attempt", "completed_at")


class StepWatch:
    """Which steps of a run changed since the last look, found with list passes in C.

    Checkpoint listeners (live events, tracing) and the template context look at every
    step of the state at every checkpoint; a loop over the steps in Python there cost
    O(steps) interpreted work per step, O(steps²) per run. A watch keeps the previous
    look's names, keys (``key`` of each step: status, attempt and end by default) and,
    with ``by_object``, the step objects themselves, and compares the new ones in C: a
    step changed when its name is new, its key differs or (``by_object``) it is another
    object. Steps are only ever added at the end of ``states`` while a run runs; any
    other change (a rewind, a removal) falls back to a comparison by name.
    """

    __slots__ = ("appended", "by_object", "key", "keys", "names", "steps")

    def __init__(self, key: Callable[[StepResult], Any] = _WATCH_KEY, *, by_object: bool = False):
        self.key = key
        self.by_object = by_object
        self.names: list[str] = []
        self.keys: list[Any] = []
        self.steps: list[StepResult] = []
        # Whether the last look found the names of the one before, in their order,
        # with any new ones after them (how a running run's steps change).
        self.appended = True

    def changed(self, states: dict[str, StepResult]) -> list[str]:
        """The names of the steps that changed (or appeared) since the last call, in
        the order of ``states``; every name on the first call."""
        names, steps = list(states), list(states.values())
        keys = list(map(self.key, steps))
        old_names, old_keys, old_steps = self.names, self.keys, self.steps
        self.names, self.keys = names, keys
        if self.by_object:
            self.steps = steps
        known = len(old_names)
        self.appended = len(names) >= known and names[:known] == old_names
        if not self.appended:
            # Steps removed or renamed (rare: a rewind): compared by name.
            before = dict(zip(old_names, old_keys, strict=True))
            objects = dict(zip(old_names, old_steps, strict=True)) if self.by_object else {}
            return [
                name
                for name, key, step in zip(names, keys, steps, strict=True)
                if name not in before
                or before[name] != key
                or (self.by_object and objects[name] is not step)
            ]
        differs = list(map(ne, keys, old_keys))
        if self.by_object:
            differs = list(map(or_, differs, map(is_not, steps, old_steps)))
        changed = []
        at = -1
        for _ in range(differs.count(True)):
            at = differs.index(True, at + 1)
            changed.append(names[at])
        changed.extend(names[known:])
        return changed


@dataclass
class WorkflowState:
    """A run's whole execution state: what ``StateStore.save()`` writes."""

    workflow_id: str
    workflow_name: str
    workflow_version: str = ""
    definition_sha256: str = ""
    status: RunStatus = RunStatus.PENDING
    current_state: str | None = None
    started_at: str = field(default_factory=utcnow)
    updated_at: str = field(default_factory=utcnow)
    completed_at: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    states: dict[str, StepResult] = field(default_factory=dict)
    revision: int = 0
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    # What started the run (SPEC §11): {"kind": "command"|"api"|"admin"|"schedule"|
    # "parent", ...}. Optional, so a file without it is still a valid document.
    started_by: dict[str, Any] | None = None
    # The run that started this one with a call_workflow step (None for a top-level run).
    parent_run_id: str | None = None
    # The workflow's declared outputs, evaluated when the run completes.
    outputs: dict[str, Any] = field(default_factory=dict)
    # Workflow hooks as they ran, by event (see wfstate.engine.hooks).
    hooks: dict[str, Any] = field(default_factory=dict)
    # Problems that did not fail the run (a failed workflow_end hook...).
    warnings: list[str] = field(default_factory=list)
    # A failed run's exit status when the definition names one (inline on_failure.status).
    exit_code: int | None = None
    # What wakes a parked (waiting) run: {"kind": "signal"|"time", "state", "signal",
    # "until", "since"}; null otherwise. Optional like started_by (no schema bump).
    waiting_for: dict[str, Any] | None = None

    @classmethod
    def new(
        cls,
        workflow_name: str,
        *,
        inputs: dict[str, Any] | None = None,
        workflow_version: str = "",
        definition_sha256: str = "",
        workflow_id: str | None = None,
        parent_run_id: str | None = None,
        started_by: dict[str, Any] | None = None,
    ) -> WorkflowState:
        now = utcnow()
        return cls(
            parent_run_id=parent_run_id,
            workflow_id=workflow_id or new_workflow_id(),
            workflow_name=workflow_name,
            workflow_version=workflow_version,
            definition_sha256=definition_sha256,
            inputs=dict(inputs or {}),
            started_at=now,
            updated_at=now,
            started_by=dict(started_by) if started_by else None,
        )

    def to_dict(self) -> dict[str, Any]:
        document = self.shallow_dict()
        document["states"] = {name: step.to_dict() for name, step in self.states.items()}
        return document

    def shallow_dict(self) -> dict[str, Any]:
        """``to_dict()`` with the step results left as ``StepResult`` objects.

        orjson serializes dataclasses natively, field by field in declaration order,
        which is ``StepResult.to_dict()``'s order: the store writes the same bytes as
        from ``to_dict()`` in half the time (a test holds the two equal).
        """
        return {
            "schema_version": self.schema_version,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "workflow_version": self.workflow_version,
            "definition_sha256": self.definition_sha256,
            "status": str(self.status),
            "current_state": self.current_state,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "completed_at": self.completed_at,
            "inputs": self.inputs,
            "started_by": self.started_by,
            "states": self.states,
            "revision": self.revision,
            "error": self.error,
            "history": self.history,
            "parent_run_id": self.parent_run_id,
            "outputs": self.outputs,
            "hooks": self.hooks,
            "warnings": self.warnings,
            "exit_code": self.exit_code,
            "waiting_for": self.waiting_for,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkflowState:
        """Build a state from a document of any known ``schema_version``.

        Raises:
            ValueError: the document is not a state (missing keys, wrong types, or a
                ``schema_version`` newer than this code knows).
        """
        if not isinstance(data, dict):
            raise ValueError(f"a state document is a JSON object, not {type(data).__name__}")
        data = upgrade(data)
        try:
            states = data.get("states")
            states = {} if states is None else states
            if not isinstance(states, dict):
                raise ValueError("'states' is not an object")
            history = data.get("history")
            history = [] if history is None else history
            if not isinstance(history, list):
                raise ValueError("'history' is not a list")
            return cls(
                schema_version=SCHEMA_VERSION,
                workflow_id=str(data["workflow_id"]),
                workflow_name=str(data["workflow_name"]),
                workflow_version=str(data.get("workflow_version") or ""),
                definition_sha256=str(data.get("definition_sha256") or ""),
                status=RunStatus(data.get("status", "pending")),
                current_state=data.get("current_state"),
                started_at=data.get("started_at") or utcnow(),
                updated_at=data.get("updated_at") or data.get("started_at") or utcnow(),
                completed_at=data.get("completed_at"),
                inputs=dict(data.get("inputs") or {}),
                states={str(k): StepResult.from_dict(v) for k, v in states.items()},
                revision=_revision(data.get("revision")),
                error=data.get("error"),
                history=list(history),
                started_by=_started_by(data.get("started_by")),
                parent_run_id=data.get("parent_run_id"),
                outputs=dict(data.get("outputs") or {}),
                hooks=dict(data.get("hooks") or {}),
                warnings=list(data.get("warnings") or []),
                exit_code=data.get("exit_code"),
                waiting_for=data.get("waiting_for"),
            )
        except KeyError as exc:
            raise ValueError(f"missing key {exc.args[0]!r}") from None
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"malformed state: {exc}") from None

    # --- derived views used by the index, the admin and the commands ---------------

    @property
    def steps_done(self) -> int:
        return sum(
            1
            for s in self.states.values()
            if s.status in (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED)
        )

    def duration_ms(self) -> int | None:
        start = parse_time(self.started_at)
        end = parse_time(self.completed_at or self.updated_at)
        if start is None or end is None:
            return None
        return int((end - start).total_seconds() * 1000)


def _started_by(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("'started_by' is not an object")
    return dict(value)


# --- schema upgrades --------------------------------------------------------------------
#
# Each function upgrades a document from version N to N+1. Version 0 is the shape of the
# very first prototype (no schema_version, no history, "id" instead of "workflow_id"),
# kept so that the upgrade path is exercised by a real case.


def _upgrade_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    if "workflow_id" not in data and "id" in data:
        data["workflow_id"] = data.pop("id")
    data.setdefault("history", [])
    data.setdefault("revision", 0)
    data["schema_version"] = 1
    return data


# Version 2 (the second wave) added what starts and links runs and what they wait for:
# ``started_by``, ``parent_run_id``, ``outputs``, ``hooks``, ``warnings``, ``exit_code``,
# ``waiting_for`` on the run; ``process``, ``loop``, ``child_run_id``, ``hooks`` and a
# wait step's ``signal``, ``signal_id``, ``payload``, ``sender``, ``received_at`` on a
# step. A version-1 file had none of them: each is "nothing" (null, or empty).
_V2_RUN_KEYS: dict[str, Any] = {
    "started_by": None,
    "parent_run_id": None,
    "outputs": {},
    "hooks": {},
    "warnings": [],
    "exit_code": None,
    "waiting_for": None,
}


def _upgrade_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    data = dict(data)
    for key, empty in _V2_RUN_KEYS.items():
        data.setdefault(key, type(empty)() if empty is not None else None)
    data["schema_version"] = 2
    return data


UPGRADES: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    0: _upgrade_0_to_1,
    1: _upgrade_1_to_2,
}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a state document up to ``SCHEMA_VERSION``.

    Raises:
        ValueError: the version is newer than this code, or not an integer.
    """
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"schema_version {version!r} is not an integer")
    if version > SCHEMA_VERSION:
        raise ValueError(
            f"schema_version {version} is newer than this wfstate understands ({SCHEMA_VERSION})"
        )
    while version < SCHEMA_VERSION:
        data = UPGRADES[version](data)
        version = data["schema_version"]
    return data


def _revision(value: Any) -> int:
    revision = int(value or 0)
    if not 0 <= revision <= REVISION_MAX:
        raise ValueError(f"revision {revision} is outside 0..{REVISION_MAX}")
    return revision
