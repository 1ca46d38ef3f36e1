"""Single-row writes: one run's row created, updated, flagged corrupt or removed."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from wfstate.exceptions import CorruptState, RunNotFound
from wfstate.index.projection import StepCounter, corrupt_fields, row_fields
from wfstate.models import WorkflowRun
from wfstate.state import WorkflowState
from wfstate.stores.base import StateStore

# What projecting a state that parsed but holds nonsense (a time that is not ISO 8601,
# naive and aware times mixed, a name that is not text, a revision out of range) raises.
PROJECTION_ERRORS = (TypeError, ValueError, AttributeError, OverflowError)

# The name of a corrupt file's row when it has none yet (the file could not say).
CORRUPT_DEFAULTS = {"workflow_name": "?"}


def write_row(
    workflow_id: str,
    fields: dict[str, Any],
    *,
    only_if: Q | None = None,
    defaults: dict[str, Any] | None = None,
) -> bool:
    """Update the run's row with ``fields``, or create it: the one update-else-create.

    ``only_if`` limits the update to a row matching it; a row that exists but does not
    match is left alone (returns False). ``defaults`` are columns a created row gets
    besides ``fields``. Returns whether a row was written.

    Raises:
        django.db.DatabaseError: the database refused the write.
    """
    with transaction.atomic():
        row = WorkflowRun.objects.filter(workflow_id=workflow_id)
        matching = row if only_if is None else row.filter(only_if)
        if matching.update(indexed_at=timezone.now(), **fields):
            return True
        if only_if is not None and row.exists():
            return False
        WorkflowRun.objects.create(workflow_id=workflow_id, **{**(defaults or {}), **fields})
        return True


def upsert(workflow_id: str, fields: dict[str, Any]) -> bool:
    """Write a row unless it holds a newer revision. Returns whether it was written.

    Raises:
        django.db.DatabaseError: the database refused the write.
    """
    # A corrupt row's revision is whatever the file said before it broke: a repaired
    # file replaces it whatever its revision.
    newer_or_same = Q(revision__lte=fields["revision"]) | Q(corrupt=True)
    return write_row(workflow_id, fields, only_if=newer_or_same)


def index_state(state: WorkflowState, *, step_count: StepCounter | None = None) -> bool:
    """Create or update the run's row from ``state``.

    A row that already holds a newer revision is left alone (returns False): the
    listener of a slower writer must not move a row backwards. :func:`sync` and
    :func:`reindex` are where the file wins unconditionally.

    Raises:
        ValueError, TypeError, AttributeError, OverflowError: the state cannot be
            projected (see ``project``).
        django.db.DatabaseError: the database refused the write.
    """
    return upsert(state.workflow_id, row_fields(state, step_count))


def index_corrupt(workflow_id: str, error: BaseException | str) -> None:
    """Flag a run's row corrupt, with the error; creates a bare row when there is none.

    Raises:
        django.db.DatabaseError: the database refused the write.
    """
    write_row(workflow_id, corrupt_fields(error), defaults=CORRUPT_DEFAULTS)


def remove(workflow_id: str) -> int:
    """Delete the run's row (its file is someone else's business). Returns rows deleted."""
    deleted, _ = WorkflowRun.objects.filter(workflow_id=workflow_id).delete()
    return deleted


def reindex(workflow_id: str, store: StateStore | None = None) -> str:
    """Rebuild one run's row from its file; the file wins whatever the revisions.

    Returns what happened: ``"indexed"``, ``"corrupt"`` (a file that cannot be parsed
    or projected, such as a revision out of range) or ``"removed"`` (no file).

    Raises:
        django.db.DatabaseError: the database refused the write.
    """
    from wfstate.stores import get_store

    store = store or get_store()
    try:
        state = store.load(workflow_id)
    except RunNotFound:
        remove(workflow_id)
        return "removed"
    except CorruptState as exc:
        index_corrupt(workflow_id, exc)
        return "corrupt"
    try:
        fields = row_fields(state)
    except PROJECTION_ERRORS as exc:
        index_corrupt(workflow_id, f"run {workflow_id} is not a valid state: {exc}")
        return "corrupt"
    write_row(workflow_id, fields)
    return "indexed"
