"""Runs that wait: ``wait`` (for a named signal) and ``sleep`` steps (docs/workflows.md).

A waiting run costs nothing: no process, no thread, no worker slot. Reaching a wait or
sleep step that cannot go on yet, the executor *parks* the run: it records the step as
``waiting``, the run as ``waiting`` with ``waiting_for`` (what wakes it, and until
when), checkpoints durably and returns; its caller then releases the run lock and the
process is free. Waking is an ordinary execution (a task of the Tasks API, enqueued at
once by a signal or with ``run_after`` for a time), so a duplicate wake-up meets the run
lock or a finished run, as any duplicate delivery does; ``recover_workflows`` wakes due
runs whose wake-up was lost.

Signals, exactly once: a signal is a file written atomically into the run's mailbox
(``StateStore.post_signal``, its own id in the name) before the sender is answered.
The executor takes it by checkpointing its payload *and id* into the wait step's result,
then removing the file. A crash between the two leaves a file whose id the state
already holds: it is skipped (and removed) the next time, never applied twice.

This module knows nothing of Django; ``wfstate.runs`` glues it to the task backend.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import jsonschema
import orjson

from wfstate.definitions.model import StateDef, WorkflowDefinition
from wfstate.definitions.templates import evaluate, render_text
from wfstate.exceptions import InvalidSignal, SignalRefused, WFStateError
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, parse_time, utcnow
from wfstate.stores.base import StateStore

if TYPE_CHECKING:
    from wfstate.engine.executor import Executor

logger = logging.getLogger("wfstate.engine")

WAIT_TYPES = frozenset({"wait", "sleep"})

__all__ = [
    "WAIT_TYPES",
    "deliver_signal",
    "format_time",
    "is_due",
    "payload_problems",
    "route",
    "run_wait",
    "waiting_step",
]


def format_time(moment: datetime) -> str:
    """A time as the state file writes it (UTC, ``Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _elapsed_ms(started_at: str | None, completed_at: str) -> int | None:
    start, end = parse_time(started_at), parse_time(completed_at)
    if start is None or end is None:
        return None
    return int((end - start).total_seconds() * 1000)


# --- executing a wait or sleep step ----------------------------------------------------------


def run_wait(executor: Executor, sdef: StateDef) -> StepResult | None:
    """Go on past a wait/sleep step if it can, else park the run.

    Returns the step's result (a signal taken, the time reached, or a wait's timeout),
    or None when the run is parked: then ``state.status`` is ``waiting`` and the caller
    must return without doing anything else.

    Raises:
        WFStateError: ``until`` does not render to an ISO time (the run fails);
            StorageError, StateLocked from a checkpoint.
    """
    state = executor._state
    assert state is not None
    now = datetime.now(UTC)
    entry = state.states.get(sdef.name)
    waiting = state.waiting_for or {}
    resumed = (
        entry is not None
        and entry.status == StepStatus.WAITING
        and waiting.get("state") == sdef.name
    )
    if resumed:
        assert entry is not None
        until = parse_time(waiting.get("until"))
    else:
        # The deadline is fixed when the run first reaches the step: a wake-up before
        # it (a signal for another step, a duplicate task) never moves it.
        until = _deadline(executor, sdef, now)
        entry = StepResult(name=sdef.name, status=StepStatus.WAITING, started_at=format_time(now))
    if sdef.type == "wait":
        taken = _take_signal(executor, sdef, entry)
        if taken is not None:
            return taken
    if until is not None and now >= until:
        return _expire(executor, sdef, entry, until)
    _park(executor, sdef, entry, until, changed=not resumed)
    return None


def _deadline(executor: Executor, sdef: StateDef, now: datetime) -> datetime | None:
    if sdef.type == "wait":
        return now + timedelta(seconds=sdef.timeout) if sdef.timeout is not None else None
    if sdef.duration is not None:
        return now + timedelta(seconds=sdef.duration)
    assert sdef.until is not None
    text = render_text(sdef.until, executor._context()).strip()
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WFStateError(
            f"sleep until {text!r}: not an ISO 8601 time (like 2026-12-01T09:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # times are UTC unless they say otherwise
    return moment.astimezone(UTC)


def consumed_signal_ids(state: WorkflowState) -> set[str]:
    """Ids of the signals this run already took (its results and the rewound ones)."""
    ids = {s.signal_id for s in state.states.values() if s.signal_id}
    for event in state.history:
        for rewound in event.get("rewound") or ():
            if isinstance(rewound, dict) and rewound.get("signal_id"):
                ids.add(str(rewound["signal_id"]))
    return ids


def _take_signal(executor: Executor, sdef: StateDef, entry: StepResult) -> StepResult | None:
    state = executor._state
    assert state is not None
    store = executor.store
    consumed = consumed_signal_ids(state)
    for record in store.pending_signals(state.workflow_id):
        if record.get("signal") != sdef.signal:
            continue  # kept for another wait step
        signal_id = str(record.get("id"))
        if signal_id in consumed:
            # Taken before a crash that came between the checkpoint and the unlink.
            store.remove_signal(state.workflow_id, signal_id)
            continue
        problems = payload_problems(sdef, record.get("payload"))
        if problems:
            # Checked when sent, so only a definition changed since then gets here.
            # Never silently dropped: the run's history keeps it.
            logger.warning(
                "run %s: signal %s for state '%s' rejected: %s",
                state.workflow_id,
                signal_id,
                sdef.name,
                "; ".join(problems),
            )
            state.history.append(
                {"event": "signal_rejected", "at": utcnow(), "record": record, "errors": problems}
            )
            executor._checkpoint()
            store.remove_signal(state.workflow_id, signal_id)
            continue
        now = utcnow()
        with executor._lock:
            entry.status = StepStatus.COMPLETED
            entry.output = record.get("payload")
            entry.signal = sdef.signal
            entry.signal_id = signal_id
            entry.payload = record.get("payload")
            entry.sender = record.get("sender")
            entry.received_at = record.get("received_at")
            entry.error = None
            entry.completed_at = now
            entry.duration_ms = _elapsed_ms(entry.started_at, now)
            state.states[sdef.name] = entry
            state.current_state = sdef.name
            state.status = RunStatus.RUNNING
            state.waiting_for = None
            if record.get("actor"):
                # The audit trail (wfstate.audit): who sent it, in the write that takes
                # it (the executor owns the state; the sender could not write it).
                state.history.append(
                    {
                        "event": "signal",
                        "at": now,
                        "actor": record["actor"],
                        "signal": sdef.signal,
                        "signal_id": signal_id,
                        "state": sdef.name,
                    }
                )
            # Durable with its id before the file goes: exactly once (module docstring).
            executor._checkpoint()
        store.remove_signal(state.workflow_id, signal_id)
        executor._emit(
            {
                "event": "signal_received",
                "state": sdef.name,
                "signal": sdef.signal,
                "signal_id": signal_id,
            }
        )
        return entry
    return None


def _expire(executor: Executor, sdef: StateDef, entry: StepResult, until: datetime) -> StepResult:
    state = executor._state
    assert state is not None
    now = utcnow()
    with executor._lock:
        if sdef.type == "wait":
            entry.status = StepStatus.FAILED
            entry.error = (
                f"timed out: no signal '{sdef.signal}' by {format_time(until)} "
                f"(timeout {sdef.timeout:g}s)"
            )
        else:
            entry.status = StepStatus.COMPLETED
            entry.output = {"until": format_time(until)}
        entry.completed_at = now
        entry.duration_ms = _elapsed_ms(entry.started_at, now)
        state.states[sdef.name] = entry
        state.current_state = sdef.name
        state.status = RunStatus.RUNNING
        state.waiting_for = None
        executor._checkpoint()
    executor._emit(
        {
            "event": "step_finished",
            "state": sdef.name,
            "status": str(entry.status),
            "attempt": 1,
            "duration_ms": entry.duration_ms,
            "error": entry.error,
        }
    )
    return entry


def _park(
    executor: Executor,
    sdef: StateDef,
    entry: StepResult,
    until: datetime | None,
    *,
    changed: bool,
) -> None:
    state = executor._state
    assert state is not None
    with executor._lock:
        state.status = RunStatus.WAITING
        if not changed:
            # Woken early (a duplicate or a signal for a later step): the file already
            # says all this; writing it again would only move the revision.
            return
        state.states[sdef.name] = entry
        state.current_state = sdef.name
        state.waiting_for = {
            "kind": "signal" if sdef.type == "wait" else "time",
            "state": sdef.name,
            "signal": sdef.signal,
            "until": format_time(until) if until is not None else None,
            "since": entry.started_at,
        }
        executor._checkpoint()
    executor._emit(
        {
            "event": "run_waiting",
            "state": sdef.name,
            "signal": sdef.signal,
            "until": state.waiting_for["until"],
        }
    )


def route(executor: Executor, sdef: StateDef, result: StepResult) -> str | None:
    """Where a finished wait/sleep step goes: a wait's timeout to ``on_timeout`` (else
    ``on_failure``); otherwise ``transitions`` (a wait's see ``signal``: name, payload,
    sender, received_at), then ``on_success``/``on_failure``.

    Raises:
        TemplateError: a ``when`` expression fails.
    """
    if sdef.type == "wait" and result.status == StepStatus.FAILED and result.signal is None:
        return sdef.on_timeout or sdef.on_failure
    ok = result.status == StepStatus.COMPLETED
    if sdef.transitions:
        context = executor._context()
        if sdef.type == "wait":
            context["signal"] = {
                "name": result.signal,
                "payload": result.payload,
                "sender": result.sender,
                "received_at": result.received_at,
            }
        for transition in sdef.transitions:
            if transition.when is None or evaluate(transition.when, context):
                return transition.goto
    return sdef.on_success if ok else sdef.on_failure


# --- waking ----------------------------------------------------------------------------------


def waiting_step(state: WorkflowState, definition: WorkflowDefinition | None) -> StateDef | None:
    """The wait/sleep state a parked run waits on, if the definition still has it."""
    if state.status != RunStatus.WAITING or not state.waiting_for or definition is None:
        return None
    sdef = definition.states.get(str(state.waiting_for.get("state")))
    return sdef if sdef is not None and sdef.type in WAIT_TYPES else None


def is_due(state: WorkflowState, store: StateStore, now: datetime | None = None) -> bool:
    """Whether a waiting run should be woken now: its time has come, or a signal it
    waits for is in its mailbox (a wake-up that was lost)."""
    if state.status != RunStatus.WAITING:
        return False
    waiting = state.waiting_for or {}
    until = parse_time(waiting.get("until"))
    if until is not None and until <= (now or datetime.now(UTC)):
        return True
    name = waiting.get("signal")
    if not name:
        return False
    consumed = consumed_signal_ids(state)
    return any(
        r.get("signal") == name and r.get("id") not in consumed
        for r in store.pending_signals(state.workflow_id)
    )


# --- sending a signal --------------------------------------------------------------------------


def payload_problems(sdef: StateDef, payload: Any) -> list[str]:
    """What is wrong with ``payload`` for this wait step (empty: nothing)."""
    if sdef.schema is None:
        return []
    validator = jsonschema.Draft202012Validator(sdef.schema)
    problems = []
    for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path)):
        where = "/".join(str(p) for p in error.absolute_path)
        problems.append(f"{where}: {error.message}" if where else error.message)
    return problems


def _reachable(definition: WorkflowDefinition, start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen or name not in definition.states:
            continue
        seen.add(name)
        todo.extend(definition.states[name].targets())
    return seen


def takers(state: WorkflowState, definition: WorkflowDefinition, signal: str) -> list[StateDef]:
    """The wait steps that can still take ``signal``: the one the run waits on, else
    those that lie ahead of where the run is (a loop may bring it back to one)."""
    current = state.current_state or definition.initial
    waiting = state.waiting_for or {}
    if state.status == RunStatus.WAITING and waiting.get("signal") == signal:
        sdef = definition.states.get(str(waiting.get("state")))
        if sdef is not None and sdef.type == "wait":
            return [sdef]
    ahead: Iterable[str] = _reachable(definition, current)
    if current in definition.states and state.states.get(current) is not None:
        # The step the run is at already ran (or runs): only a route back reaches it.
        ahead = set().union(
            *(_reachable(definition, t) for t in definition.states[current].targets())
        )
    return [
        definition.states[name]
        for name in sorted(ahead)
        if definition.states[name].type == "wait" and definition.states[name].signal == signal
    ]


def deliver_signal(
    store: StateStore,
    definition: WorkflowDefinition,
    workflow_id: str,
    signal: str,
    payload: Any,
    sender: dict[str, Any] | None = None,
    actor: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], WorkflowState]:
    """Check a signal and keep it in the run's mailbox; returns (record, state).

    ``actor`` (``wfstate.audit``: who sent it, through which channel) is kept with it,
    and written into the run's history by the checkpoint that takes it.

    The check and the write happen under the run's write lock, which every checkpoint
    takes: a run cannot end between "it can take this" and "it is kept".

    Raises:
        RunNotFound, CorruptState: no such run / unreadable state.
        SignalRefused: the run ended, or no wait step for this signal lies ahead.
        InvalidSignal: the payload is not JSON or fails the wait step's schema.
        StorageError, StateLocked: the mailbox could not be written.
    """
    try:
        orjson.dumps(payload)
    except TypeError as exc:
        raise InvalidSignal(f"the payload of signal '{signal}' is not JSON: {exc}") from None
    with store.write_lock(workflow_id):
        state = store.load(workflow_id)
        if state.status.is_final:
            raise SignalRefused(
                f"run {workflow_id} already ended {state.status}: signal '{signal}' refused"
            )
        candidates = takers(state, definition, signal)
        if not candidates:
            waits = sorted(
                s.name
                for s in definition.states.values()
                if s.type == "wait" and s.signal == signal
            )
            why = (
                f"its wait step{'s' * (len(waits) > 1)} {', '.join(waits)} already passed"
                if waits
                else f"workflow '{definition.name}' has no wait step for it"
            )
            raise SignalRefused(f"run {workflow_id} cannot take signal '{signal}': {why}")
        problems: list[str] = []
        for sdef in candidates:
            found = payload_problems(sdef, payload)
            if not found:
                break
            problems.extend(f"state '{sdef.name}': {p}" for p in found)
        else:
            raise InvalidSignal(
                f"the payload of signal '{signal}' for run {workflow_id} does not match the "
                "schema: " + "; ".join(problems)
            )
        record = {
            "id": uuid.uuid4().hex,
            "signal": signal,
            "payload": payload,
            "sender": dict(sender or {}),
            "received_at": utcnow(),
        }
        if actor is not None:
            record["actor"] = dict(actor)
        store.post_signal(workflow_id, record)
    return record, state
