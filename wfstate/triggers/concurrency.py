"""Concurrency limits: at most ``limit`` runs per key execute at a time, across hosts.

A limit is N **slot locks** per key (DESIGN "Second wave"), taken by the executor under
the run lock, before the first step, and held for the whole execution. They are the
store's run locks under other names (``slot-<digest>-<i>``): flock on one host with the
file backend, Redis locks across hosts with the Redis backend. So a slot held by an
executor that dies (SIGKILL, a lost host) frees exactly when its run lock does: the OS,
or Redis, drops it with the process. Nothing has to expire.

A run that finds every slot taken is, by ``on_limit``:

* ``queue`` (default): left ``pending``. ``QueueEntry`` rows order the queue by the
  runs' creation times; when a holder ends it hands the next queued runs to the task
  backend, and a scheduler pass (``wake_queues``) does the same for slots freed by a
  crash. A run whose turn has not come (older runs queued before it fill the free
  slots) does not even try the locks.
* ``cancel_newest``: recorded ``cancelled`` at once, with the reason.
* ``cancel_oldest``: the oldest run holding a slot is asked to stop (as
  ``cancel_workflow`` would), and this one waits in the queue for the slot it frees.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

from django.db import IntegrityError, transaction

from wfstate.definitions.model import ConcurrencyDef, WorkflowDefinition
from wfstate.definitions.templates import build_context, render_text
from wfstate.exceptions import RunFinished, RunLocked, RunNotFound, WFStateError
from wfstate.state import RunStatus, WorkflowState, parse_time, utcnow
from wfstate.stores.base import StateStore
from wfstate.triggers.models import QueueEntry

logger = logging.getLogger("wfstate.concurrency")


def concurrency_key(definition: WorkflowDefinition, state: WorkflowState) -> str | None:
    """``<workflow>:<rendered key>``, or None when the workflow has no limit.

    Raises:
        TemplateError: the key template does not render for this run's inputs.
    """
    spec = definition.concurrency
    if spec is None:
        return None
    rendered = render_text(spec.key, build_context(state)) if spec.key else ""
    return f"{definition.name}:{rendered}"[:255]


def slot_name(key: str, index: int) -> str:
    """The lock name of slot ``index`` of ``key`` (a digest: keys are free text)."""
    return f"slot-{hashlib.sha256(key.encode()).hexdigest()[:32]}-{index}"


def _take_slot(store: StateStore, key: str, limit: int) -> contextlib.ExitStack | None:
    """Hold the first free slot of ``key``; None when all ``limit`` are taken."""
    for index in range(limit):
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(store.slot_lock(slot_name(key, index)))
        except RunLocked:
            stack.close()
            continue
        return stack
    return None


# --- the queue ---------------------------------------------------------------------------


def _entry(state: WorkflowState, workflow_name: str, key: str) -> QueueEntry:
    """This run's queue row (queued unless it already holds a slot)."""
    created = parse_time(state.started_at) or datetime.now(UTC)
    try:
        with transaction.atomic():
            entry, _ = QueueEntry.objects.get_or_create(
                workflow_id=state.workflow_id,
                defaults={
                    "workflow_name": workflow_name,
                    "key": key,
                    "status": QueueEntry.Status.QUEUED,
                    "run_created_at": created,
                },
            )
    except IntegrityError:  # made concurrently by a duplicate delivery
        entry = QueueEntry.objects.get(workflow_id=state.workflow_id)
    if entry.key != key or entry.status != QueueEntry.Status.QUEUED:
        # A resumed run (its last execution crashed holding a slot) queues again.
        QueueEntry.objects.filter(pk=entry.pk).update(key=key, status=QueueEntry.Status.QUEUED)
        entry.key, entry.status = key, QueueEntry.Status.QUEUED
    return entry


def _live(store: StateStore, entry: QueueEntry) -> bool:
    """True while the entry's run may still execute; a dead entry is deleted."""
    try:
        status = store.load(entry.workflow_id).status
    except WFStateError:
        status = None
    if status in (RunStatus.PENDING, RunStatus.RUNNING):
        return True
    QueueEntry.objects.filter(pk=entry.pk).delete()
    return False


def _older_queued(store: StateStore, entry: QueueEntry, enough: int) -> int:
    """How many live queued runs of the key are ahead of ``entry`` (counting to ``enough``)."""
    ahead = 0
    older = QueueEntry.objects.filter(
        key=entry.key, status=QueueEntry.Status.QUEUED, run_created_at__lte=entry.run_created_at
    ).exclude(pk=entry.pk)
    for other in older.order_by("run_created_at", "workflow_id"):
        if (other.run_created_at, other.workflow_id) >= (entry.run_created_at, entry.workflow_id):
            continue
        if _live(store, other):
            ahead += 1
            if ahead >= enough:
                break
    return ahead


def queue_position(workflow_id: str) -> int | None:
    """A queued run's place in its key's queue (0 = next), or None when not queued."""
    entry = QueueEntry.objects.filter(
        workflow_id=workflow_id, status=QueueEntry.Status.QUEUED
    ).first()
    if entry is None:
        return None
    return (
        QueueEntry.objects.filter(key=entry.key, status=QueueEntry.Status.QUEUED)
        .filter(run_created_at__lt=entry.run_created_at)
        .count()
    )


def wake_key(key: str, limit: int) -> list[str]:
    """Hand the ``limit`` oldest queued runs of ``key`` to the task backend (entries of
    runs that ended meanwhile, e.g. cancelled while queued, are dropped on the way)."""
    from wfstate.stores import get_store
    from wfstate.tasks import enqueue_execution

    store = get_store()
    woken: list[str] = []
    queued = QueueEntry.objects.filter(key=key, status=QueueEntry.Status.QUEUED).order_by(
        "run_created_at", "workflow_id"
    )
    for entry in queued.iterator():
        if len(woken) >= limit:
            break
        if not _live(store, entry):
            continue
        try:
            enqueue_execution(entry.workflow_id)
        except Exception:
            logger.exception("could not enqueue queued run %s", entry.workflow_id)
            continue
        woken.append(entry.workflow_id)
    return woken


def wake_queues() -> list[str]:
    """For every key with queued runs and a free slot, wake its next runs (a slot
    freed by a crashed executor has nobody else to do it). Returns the ids woken."""
    from wfstate import runs
    from wfstate.stores import get_store

    store = get_store()
    woken: list[str] = []
    keys = (
        QueueEntry.objects.filter(status=QueueEntry.Status.QUEUED)
        .values_list("key", "workflow_name")
        .distinct()
    )
    for key, workflow_name in keys:
        try:
            spec = runs.get_definition(workflow_name).concurrency
        except WFStateError:
            continue
        limit = spec.limit if spec is not None else 1
        if any(store.slot_free(slot_name(key, i)) for i in range(limit)):
            woken += wake_key(key, limit)
    return woken


# --- admission ---------------------------------------------------------------------------


def _over_limit(
    store: StateStore, state: WorkflowState, entry: QueueEntry, spec: ConcurrencyDef
) -> None:
    if spec.on_limit == "cancel_newest":
        state.status = RunStatus.CANCELLED
        state.error = (
            f"cancelled: the concurrency limit of {spec.limit} for key {entry.key!r} is reached"
        )
        state.completed_at = state.updated_at = utcnow()
        QueueEntry.objects.filter(pk=entry.pk).delete()
        return
    if spec.on_limit == "cancel_oldest":
        from wfstate import runs

        holders = QueueEntry.objects.filter(
            key=entry.key, status=QueueEntry.Status.ADMITTED
        ).order_by("run_created_at", "workflow_id")
        for holder in holders:
            try:
                runs.cancel_run(holder.workflow_id)
            except (RunFinished, RunNotFound):
                QueueEntry.objects.filter(pk=holder.pk).delete()
                continue
            logger.info(
                "run %s: cancelling the oldest run %s of key %r to make room",
                state.workflow_id,
                holder.workflow_id,
                entry.key,
            )
            break
    # queue (and cancel_oldest, which waits for the slot it freed): stay pending.


@contextlib.contextmanager
def admission(
    store: StateStore, state: WorkflowState, definition: WorkflowDefinition
) -> Iterator[bool]:
    """Under the run lock, before the first step: yield True holding a slot (released,
    and the next queued runs woken, when the block ends), or False when the run must
    not execute now (left pending in the queue, or cancelled by ``cancel_newest``:
    ``state`` says which).

    Raises:
        TemplateError: the key does not render; StorageError: a slot lock failed.
    """
    spec = definition.concurrency
    key = concurrency_key(definition, state)
    if spec is None or key is None:
        yield True
        return
    entry = _entry(state, definition.name, key)
    held = None
    if _older_queued(store, entry, spec.limit) < spec.limit:
        held = _take_slot(store, key, spec.limit)
    if held is None:
        _over_limit(store, state, entry, spec)
        yield False
        return
    QueueEntry.objects.filter(pk=entry.pk).update(status=QueueEntry.Status.ADMITTED)
    try:
        yield True
    finally:
        held.close()
        try:
            QueueEntry.objects.filter(pk=entry.pk).delete()
            wake_key(key, spec.limit)
        except Exception:
            # The scheduler's wake_queues is the safety net for a missed wake-up.
            logger.exception("run %s: could not wake the queue of %r", state.workflow_id, key)
