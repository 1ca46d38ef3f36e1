"""The service layer: what every face (commands, admin, API, tasks) calls.

Each function glues the definition registry, the store, the engine and the index for
one operation. Faces parse their input, call one of these, and format the result.

``wfstate.tasks`` (a face: the task a worker runs) imports this module; the functions
here that hand a run to a worker import ``wfstate.tasks`` only when they are called.
That is on purpose, not a cycle to untangle: declaring the task checks the ``TASKS``
setting, and importing the service layer (from a command, a test, a spawned process)
must not need a task backend configured.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from wfstate import audit, events, secrets, tracing
from wfstate.conf import conf
from wfstate.definitions import get_registry, validate_inputs
from wfstate.definitions.model import WorkflowDefinition
from wfstate.engine import Executor, mark_cancelled, prepare_resume
from wfstate.engine.events import Progress
from wfstate.engine.processes import reap_orphans
from wfstate.exceptions import NotResumable, RunFinished, RunLocked, StillRunning, WFStateError
from wfstate.records import RunLockOwner
from wfstate.state import RunStatus, StepStatus, WorkflowState, parse_time, utcnow
from wfstate.stores import get_store
from wfstate.stores.base import StateStore

logger = logging.getLogger("wfstate.runs")


def get_definition(name: str) -> WorkflowDefinition:
    """Raises: WorkflowNotFound, InvalidDefinition."""
    return get_registry().get(name)


def list_definitions() -> list[WorkflowDefinition]:
    return get_registry().all()


def load_run(workflow_id: str) -> WorkflowState:
    """The run's state, from its file. Raises: RunNotFound, CorruptState."""
    return get_store().load(workflow_id)


def loop_iterations(
    workflow_id: str, loop: str, *, file: str | None = None, offset: int = 0, limit: int = 100
) -> dict[str, Any]:
    """A loop's iterations in a run (see ``wfstate.engine.loops.read_iterations``).

    Raises:
        RunNotFound: no such run, or no such loop in it. CorruptState, StorageError.
    """
    from wfstate.engine.loops import read_iterations

    store = get_store()
    return read_iterations(
        store, store.load(workflow_id), loop, file=file, offset=offset, limit=limit
    )


def run_owner(workflow_id: str) -> RunLockOwner | None:
    """Who executes the run now (pid, host, since), or None."""
    return get_store().run_lock_owner(workflow_id)


# --- the index, kept in step with the files ------------------------------------------------


def _index(state: WorkflowState) -> None:
    """Project one state into the index at once (status changes done outside a run)."""
    if not conf.INDEX_ON_WRITE:
        return
    try:
        from wfstate import index

        index.index_state(state)
    except Exception:
        # The file is the truth and is already durable; sync_workflow_index repairs rows.
        logger.exception("could not index run %s", state.workflow_id)


@contextlib.contextmanager
def _listeners() -> Iterator[list[Callable[[WorkflowState], None]]]:
    if not conf.INDEX_ON_WRITE:
        yield []
        return
    try:
        from wfstate import index

        listener = index.make_listener()
    except Exception:
        # An index that cannot be reached never stops a run; sync_workflow_index repairs it.
        logger.exception("could not set up indexing; the run goes on unindexed")
        yield []
        return
    try:
        yield [listener]
    finally:
        try:
            listener.close()
        except Exception:
            logger.exception("could not flush the index listener")


# --- execution -------------------------------------------------------------------------


def execute(
    workflow_id: str,
    *,
    progress: Progress | None = None,
    cancel_event: threading.Event | None = None,
    prepare: Callable[[WorkflowState, WorkflowDefinition], None] | None = None,
) -> WorkflowState:
    """Execute a run in this process, holding its run lock throughout.

    ``prepare`` runs under the run lock before execution (a resume rewinds there), so
    checking and changing a run happen under the same lock. A resume (``prepare``)
    waits briefly for the lock of an executor whose run's file already says it ended.
    The run lock is released as soon as the outcome is durable; the index is flushed
    after that. A pending or crashed run whose workflow is gone or invalid is recorded
    ``failed`` with the reason (a resume of it is refused instead).

    Raises:
        RunLocked: another executor holds the run (fails at once, never waits).
        RunNotFound, CorruptState, WorkflowNotFound, InvalidDefinition, NotResumable.
    """
    before: dict[str, Any] = {}
    state = _execute(
        workflow_id,
        progress=progress,
        cancel_event=cancel_event,
        prepare=prepare,
        before=before,
    )
    if state.status == RunStatus.WAITING:
        # Parked: after the run lock is released, so a wake-up finds it free.
        _arrange_wake(state, before.get("waiting_for"))
    return state


def _arrange_wake(state: WorkflowState, parked_before: dict[str, Any] | None) -> None:
    """A run just parked: schedule its time wake-up, and wake it at once if a signal it
    waits for came while it was parking (that signal's own wake-up met the run lock)."""
    from wfstate.engine import waits
    from wfstate.tasks import enqueue_execution, schedule_wake

    waiting = state.waiting_for or {}
    until = parse_time(waiting.get("until"))
    try:
        if waits.is_due(state, get_store()):
            enqueue_execution(state.workflow_id)
        elif until is not None and waiting != parked_before:
            # Only for a new park: an early wake-up leaves the scheduled one in place.
            schedule_wake(state.workflow_id, until)
    except Exception:
        # The run is parked durably; recover_workflows wakes it when due.
        logger.exception("could not schedule the wake-up of run %s", state.workflow_id)


def signal_run(
    workflow_id: str,
    signal: str,
    payload: Any = None,
    *,
    sender: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], WorkflowState]:
    """Send ``signal`` with ``payload`` to a run (docs/workflows.md, "Waiting").

    The signal is kept durably in the run's mailbox before this returns; a run parked
    waiting for it is enqueued at once through the Tasks API. A run not yet at its wait
    step takes it when it gets there. ``sender`` is recorded with it (who, from where;
    ``{"kind": "python"}`` by default), and so is the audit actor (``wfstate.audit``),
    which the run's history names when the run takes the signal. Returns (the signal's
    record, the run's state).

    Raises:
        RunNotFound, CorruptState; WorkflowNotFound, InvalidDefinition (its workflow);
        SignalRefused: the run ended, or no wait step for this signal lies ahead;
        InvalidSignal: the payload fails the wait step's schema (nothing changed);
        StorageError, StateLocked.
    """
    from wfstate.engine import waits

    store = get_store()
    state = store.load(workflow_id)
    definition = get_definition(state.workflow_name)
    who = dict(sender) if sender is not None else {"kind": "python", "user": None}
    record, state = waits.deliver_signal(
        store, definition, workflow_id, signal, payload, who, actor=audit.actor()
    )
    waiting = state.waiting_for or {}
    if state.status == RunStatus.WAITING and waiting.get("signal") == signal:
        from wfstate.tasks import enqueue_execution

        enqueue_execution(workflow_id)
    return record, state


def _execute(
    workflow_id: str,
    *,
    progress: Progress | None = None,
    cancel_event: threading.Event | None = None,
    prepare: Callable[[WorkflowState, WorkflowDefinition], None] | None = None,
    before: dict[str, Any] | None = None,
) -> WorkflowState:
    """The body of :func:`execute` (see there), under the run lock; ``before`` gets
    what the run waited for when it was loaded (a new park schedules a new wake-up)."""
    store = get_store()
    # The index listener is closed (its last rows flushed to the database) only after
    # the run lock is released: once the outcome is durable in the file, the run can be
    # resumed at once, without waiting for the index.
    with (
        _listeners() as listeners,
        _take_run_lock(store, workflow_id, resuming=prepare is not None),
    ):
        state = store.load(workflow_id)
        reap_orphans(state)  # a step left running by a dead executor must not run twice
        try:
            definition = get_definition(state.workflow_name)
        except WFStateError as exc:
            if prepare is not None or state.status.is_final:
                raise  # a resume that cannot work is refused; the file is untouched
            # Executing a pending or crashed run whose workflow is gone or broken:
            # the run fails with the reason, rather than staying pending forever.
            return _fail_unexecutable(store, workflow_id, exc)
        if prepare is not None:
            prepare(state, definition)
        elif state.status.is_final:
            return state  # a duplicate delivery of a finished run: nothing to do
        if before is not None:
            before["waiting_for"] = state.waiting_for
        from wfstate.triggers.concurrency import admission

        # A concurrency slot, taken under the run lock before the first step.
        with admission(store, state, definition) as admitted:
            if not admitted:  # queued behind the limit (or cancelled by it)
                if prepare is not None or state.status.is_final:
                    store.save(state)
                    _index(state)
                return state
            with tracing.spans() as traced, events.logging_events(store) as logged:
                executor = Executor(
                    store,
                    definition,
                    # traced: OpenTelemetry (wfstate.tracing); logged: the SSE log
                    # (wfstate.events)
                    listeners=[*listeners, *traced, *logged],
                    progress=progress,
                    max_inline_output=conf.MAX_INLINE_OUTPUT,
                    cancel_event=cancel_event,
                    resolve=get_definition,
                )
                try:
                    return _record_cancel_request(store, executor.execute(state))
                finally:
                    store.clear_cancel(workflow_id)


# How long a resume waits for a run lock whose holder already recorded the run's end
# (it is only returning). Short: a live executor of a running run is refused at once.
FINISHING_GRACE = 5.0


@contextlib.contextmanager
def _take_run_lock(store: StateStore, workflow_id: str, *, resuming: bool) -> Iterator[None]:
    """The run lock, without waiting; except that a resume waits (briefly) for an
    executor whose run's file already says it ended: that holder is only returning.

    Raises:
        RunLocked: somebody executes the run.
    """
    deadline = time.monotonic() + FINISHING_GRACE
    while True:
        held = contextlib.ExitStack()
        try:
            held.enter_context(store.run_lock(workflow_id))
            break
        except RunLocked:
            if not resuming or time.monotonic() >= deadline:
                raise
            try:
                finishing = store.load(workflow_id).status.is_final
            except WFStateError:
                finishing = False
            if not finishing:
                raise
            time.sleep(0.01)
    # Taken: the body's own errors go through the lock's exit, never into the loop above.
    with held:
        yield


def _fail_unexecutable(store: StateStore, workflow_id: str, exc: WFStateError) -> WorkflowState:
    """Record, under the run lock the caller holds, why a run cannot be executed."""

    def fail(state: WorkflowState) -> None:
        now = utcnow()
        for entry in state.states.values():
            if entry.status == StepStatus.RUNNING:
                entry.status = StepStatus.FAILED
                entry.error = "interrupted"
                entry.completed_at = now
        state.status = RunStatus.FAILED
        state.error = f"cannot execute run {workflow_id}: {exc}"
        state.completed_at = now

    logger.error("run %s cannot be executed: %s", workflow_id, exc)
    state = store.update(workflow_id, fail)
    _index(state)
    return state


def create_run(
    name: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    coerce_strings: bool = False,
    started_by: Mapping[str, Any] | None = None,
) -> tuple[WorkflowState, WorkflowDefinition]:
    """Validate inputs and write the run's first (pending) checkpoint.

    ``started_by`` is recorded in the state (SPEC §11: ``{"kind": "command"|"api"|...}``).

    Raises:
        WorkflowNotFound, InvalidDefinition, InvalidInputs, StorageError.
    """
    definition = get_definition(name)
    values = validate_inputs(definition, dict(inputs or {}), coerce_strings=coerce_strings)
    state = WorkflowState.new(
        definition.name,
        inputs=values,
        workflow_version=definition.version,
        definition_sha256=definition.sha256,
        started_by=dict(started_by) if started_by else None,
    )
    state.inputs = secrets.seal_inputs(definition, values)  # before the first write
    state.history.append(audit.entry("start"))  # who started it, in its first write
    store = get_store()
    store.save(state)
    events.append(store, state, [])  # the live stream's first event
    _index(state)
    return state, definition


def plan_run(
    name: str, inputs: Mapping[str, Any] | None = None, *, coerce_strings: bool = False
) -> dict[str, Any]:
    """A dry run: validate the inputs and return the plan of a run; nothing is written,
    no lock is taken, no command or callable runs (see ``wfstate.engine.plan``).

    Raises:
        WorkflowNotFound, InvalidDefinition, InvalidInputs.
    """
    from wfstate.engine.plan import plan

    definition = get_definition(name)
    return plan(
        definition, dict(inputs or {}), resolve=get_definition, coerce_strings=coerce_strings
    )


def start_run(
    name: str,
    inputs: Mapping[str, Any] | None = None,
    *,
    coerce_strings: bool = False,
    detach: bool = False,
    progress: Progress | None = None,
    cancel_event: threading.Event | None = None,
    on_created: Callable[[WorkflowState], None] | None = None,
    idempotency_key: str | None = None,
    started_by: Mapping[str, Any] | None = None,
) -> WorkflowState:
    """Start a run: execute it here, or (``detach``) enqueue it and return it pending.

    With ``idempotency_key``, a second start of the same workflow with the same key
    returns the run the first one created, as it is now (``on_created`` is then not
    called, and nothing is executed or enqueued again).

    Raises:
        WorkflowNotFound, InvalidDefinition, InvalidInputs, StorageError,
        IdempotencyConflict (the key was used with other inputs).
    """
    if idempotency_key is not None:
        from wfstate.triggers import idempotency

        state, created = idempotency.create_run_once(
            name, inputs, key=idempotency_key, coerce_strings=coerce_strings, started_by=started_by
        )
        if not created:
            return state
    else:
        state, _definition = create_run(
            name, inputs, coerce_strings=coerce_strings, started_by=started_by
        )
    if on_created is not None:
        on_created(state)
    if detach:
        from wfstate.tasks import enqueue_execution

        enqueue_execution(state.workflow_id)
        return state
    return execute(state.workflow_id, progress=progress, cancel_event=cancel_event)


def resume_run(
    workflow_id: str,
    *,
    from_state: str = "current",
    inputs: Mapping[str, Any] | None = None,
    allow_changed_definition: bool = False,
    coerce_strings: bool = False,
    detach: bool = False,
    progress: Progress | None = None,
    cancel_event: threading.Event | None = None,
) -> WorkflowState:
    """Resume a crashed, failed or cancelled run (or a completed one with ``from_state``).

    The check and the rewind happen under the run lock. With ``detach`` the run is
    rewound and saved here, then handed to the background, and this returns at once.

    Raises:
        RunLocked (someone executes it), RunNotFound, NotResumable, DefinitionChanged,
        InvalidInputs, CorruptState.
    """

    def prepare(state: WorkflowState, definition: WorkflowDefinition) -> None:
        # Refused before anything changes when a secret input's key was dropped.
        opened = secrets.open_inputs(state.inputs)
        overrides: dict[str, Any] = {}
        if inputs:
            merged = validate_inputs(
                definition,
                {**opened, **inputs},
                coerce_strings=coerce_strings,
            )
            overrides = secrets.seal_inputs(definition, {k: merged[k] for k in inputs})
        prepare_resume(
            state,
            definition,
            from_state=from_state,
            inputs=overrides,
            allow_changed_definition=allow_changed_definition,
        )
        state.history[-1]["actor"] = audit.actor()  # the resume entry names who asked
        get_store().clear_cancel(workflow_id)
        audit.take_cancel_request(get_store(), workflow_id)  # a stale one, from a crash

    if not detach:
        return execute(workflow_id, progress=progress, cancel_event=cancel_event, prepare=prepare)
    state = _prepare_detached(workflow_id, prepare)
    from wfstate.tasks import enqueue_execution

    enqueue_execution(workflow_id)
    return state


def _prepare_detached(
    workflow_id: str, prepare: Callable[[WorkflowState, WorkflowDefinition], None]
) -> WorkflowState:
    """Check and rewind a run under its run lock and save it, for a worker to execute."""
    store = get_store()
    with _take_run_lock(store, workflow_id, resuming=True):
        state = store.load(workflow_id)
        reap_orphans(state)  # before the rewind moves the step (and its record) to history
        prepare(state, get_definition(state.workflow_name))
        store.save(state)
    _index(state)
    return state


def cancel_run(workflow_id: str) -> tuple[str, WorkflowState]:
    """Cancel a run.

    Returns ``("requested", state)`` when a live executor was asked to stop (it kills
    the step's process group and records ``cancelled`` within 2 seconds), or
    ``("cancelled", state)`` when nobody executed the run and it was marked at once;
    then a step process left behind by a dead executor is killed first (see
    ``wfstate.engine.processes``), also within 2 seconds.

    Raises:
        RunNotFound, RunFinished (already ended), CorruptState.
    """
    store = get_store()
    state = store.load(workflow_id)
    if state.status.is_final:
        raise RunFinished(f"run {workflow_id} already ended {state.status}")
    children = _active_children(state)
    try:
        with store.run_lock(workflow_id):
            state = store.update(workflow_id, _reap_and_mark_cancelled)
            store.clear_cancel(workflow_id)
    except RunLocked:
        audit.note_cancel_request(store, workflow_id)  # recorded when the executor stops
        store.request_cancel(workflow_id)
        # The child polls its parent's request too; its own makes it plain in its files.
        for child_id in children:
            store.request_cancel(child_id)
        return "requested", store.load(workflow_id)
    _index(state)
    for child_id in children:
        # Nobody executes the parent, so nobody executes its child either (it ran in
        # the parent's process): mark it cancelled too.
        with contextlib.suppress(RunFinished, WFStateError):
            cancel_run(child_id)
    return "cancelled", state


def _active_children(state: WorkflowState) -> list[str]:
    """The child runs of the parent's unfinished call_workflow steps."""
    return [
        step.child_run_id
        for step in state.states.values()
        if step.child_run_id and not step.completed_at
    ]


def _reap_and_mark_cancelled(state: WorkflowState) -> WorkflowState:
    if not state.status.is_final:
        reap_orphans(state)
    mark_cancelled(state)
    state.history.append(audit.entry("cancel"))  # who cancelled it (wfstate.audit)
    return state


def _record_cancel_request(store: Any, state: WorkflowState) -> WorkflowState:
    """After an execution (run lock still held): who asked it to cancel, in its history."""
    note = audit.take_cancel_request(store, state.workflow_id)
    if note is None or state.status != RunStatus.CANCELLED:
        return state
    state = store.update(state.workflow_id, lambda s: s.history.append(note))
    _index(state)
    return state


def delete_run(workflow_id: str) -> None:
    """Delete a run's file, side files and index row.

    Raises:
        RunNotFound, StillRunning (an executor holds it: cancel it first).
    """
    store = get_store()
    store.delete(workflow_id)
    # The run's history goes with it: the record of who deleted it is the log's (and
    # the admin's LogEntry).
    logger.info("run %s deleted by %s", workflow_id, audit.actor()["by"])
    if conf.INDEX_ON_WRITE:
        from wfstate import index

        index.remove(workflow_id)


def _recover(state: WorkflowState, definition: WorkflowDefinition) -> None:
    if state.status.is_final:
        raise NotResumable(f"run {state.workflow_id} already ended {state.status}")
    prepare_resume(state, definition, from_state="current")
    state.history[-1]["event"] = "recover"
    state.history[-1]["actor"] = audit.actor()


def _recovered_by_parent(store: Any, state: WorkflowState) -> bool:
    """A child whose parent is unfinished is resumed by its parent's recovery (in the
    parent's process, as it ran), never on its own."""
    if not state.parent_run_id:
        return False
    try:
        parent = store.load(state.parent_run_id)
    except WFStateError:
        return False  # no parent any more: recover the child on its own
    return not parent.status.is_final


def recover_runs(
    *,
    detach: bool = False,
    min_age: float = 0.0,
    progress: Progress | None = None,
    on_run: Callable[[str, str], None] | None = None,
    on_error: Callable[[str, WFStateError], None] | None = None,
) -> list[str]:
    """Resume every ``running``/``pending`` run whose run lock is free, and wake every
    ``waiting`` run that is due (docs/workflows.md).

    ``min_age`` skips runs updated more recently than that many seconds (a run just
    enqueued is not crashed). ``on_run(workflow_id, outcome)`` reports each.
    A run that cannot be recovered (refused, or any error at all) is reported with
    ``on_run(workflow_id, "error: ...")`` and ``on_error(workflow_id, exc)``, and the
    next run is recovered all the same: one bad run never stops the others.
    Unexpected errors reach ``on_error`` as a :class:`WFStateError` wrapping them.
    Returns the ids handed on.
    """
    from datetime import UTC, datetime

    store = get_store()
    recovered: list[str] = []
    now = datetime.now(UTC)
    from wfstate.engine.waits import is_due

    for workflow_id, state in store.iter_states():
        if isinstance(state, Exception) or state.status not in (
            RunStatus.RUNNING,
            RunStatus.PENDING,
            RunStatus.WAITING,
        ):
            continue
        try:
            if state.status == RunStatus.WAITING:
                # Parked runs are left alone unless due (their wake-up task was lost).
                if not is_due(state, store, now) or store.run_lock_owner(workflow_id):
                    continue
                if detach:
                    from wfstate.tasks import enqueue_execution

                    enqueue_execution(workflow_id)
                    outcome = "enqueued"
                else:
                    outcome = str(execute(workflow_id, progress=progress).status)
                recovered.append(workflow_id)
                if on_run is not None:
                    on_run(workflow_id, outcome)
                continue
            updated = parse_time(state.updated_at)
            if min_age and updated is not None and (now - updated).total_seconds() < min_age:
                continue
            if store.run_lock_owner(workflow_id) is not None:
                continue
            if _recovered_by_parent(store, state):
                continue
            if detach:
                from wfstate.tasks import enqueue_execution

                if state.status == RunStatus.RUNNING:
                    # Rewind here, so the interrupted step goes to history exactly as
                    # when recovering in this process.
                    _prepare_detached(workflow_id, _recover)
                enqueue_execution(workflow_id)
                outcome = "enqueued"
            elif state.status == RunStatus.RUNNING:
                # A crashed run: its in-flight step goes to history, and runs again.
                outcome = str(execute(workflow_id, progress=progress, prepare=_recover).status)
            else:
                outcome = str(execute(workflow_id, progress=progress).status)
        except RunLocked:
            continue  # somebody else took it meanwhile: it is being recovered
        except Exception as exc:
            error = exc if isinstance(exc, WFStateError) else _unexpected(workflow_id, exc)
            if on_run is not None:
                on_run(workflow_id, f"error: {error}")
            if on_error is not None:
                on_error(workflow_id, error)
            continue
        recovered.append(workflow_id)
        if on_run is not None:
            on_run(workflow_id, outcome)
    return recovered


def _unexpected(workflow_id: str, exc: Exception) -> WFStateError:
    logger.error("could not recover run %s", workflow_id, exc_info=exc)
    return WFStateError(f"run {workflow_id}: unexpected {type(exc).__name__}: {exc}")


__all__ = [
    "StillRunning",
    "cancel_run",
    "create_run",
    "delete_run",
    "execute",
    "get_definition",
    "list_definitions",
    "load_run",
    "plan_run",
    "recover_runs",
    "resume_run",
    "run_owner",
    "signal_run",
    "start_run",
]
