"""Creating a run whose id was chosen (and recorded in a database row) beforehand.

Schedules and idempotency keys insert a row naming the run *before* the run's first
checkpoint exists, so that a crash in between leaves a row pointing at a run that can
still be created, never at nothing. Whoever finds such a row (the original creator,
a racing request with the same key, a scheduler repairing a tick) calls
``create_if_absent``: the check and the write happen under the run's run lock, so
exactly one of them writes the first checkpoint, and only that one hands it on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from wfstate.exceptions import RunLocked, StateLocked
from wfstate.state import WorkflowState
from wfstate.stores import get_store

# How long a racer waits for the holder of the run lock to write the first checkpoint.
CREATE_WAIT = 30.0


def create_if_absent(
    workflow_id: str,
    name: str,
    inputs: Mapping[str, Any],
    *,
    started_by: Mapping[str, Any] | None = None,
) -> tuple[WorkflowState, bool]:
    """The run ``workflow_id``, created pending with ``inputs`` if it does not exist yet.

    ``inputs`` are validated already. Returns ``(state, created)``; ``created`` is True
    for exactly one caller, however many race.

    Raises:
        WorkflowNotFound, InvalidDefinition, StorageError, StateLocked (the run lock
        stayed held for ``CREATE_WAIT`` seconds without the run appearing).
    """
    from wfstate import runs

    store = get_store()
    deadline = time.monotonic() + CREATE_WAIT
    delay = 0.005
    while True:
        if store.exists(workflow_id):
            return store.load(workflow_id), False
        try:
            with store.run_lock(workflow_id):
                if store.exists(workflow_id):
                    return store.load(workflow_id), False
                definition = runs.get_definition(name)
                state = WorkflowState.new(
                    definition.name,
                    inputs=dict(inputs),
                    workflow_version=definition.version,
                    definition_sha256=definition.sha256,
                    workflow_id=workflow_id,
                    started_by=dict(started_by) if started_by else None,
                )
                store.save(state)
        except RunLocked:
            # Another creator is writing it (or, once it exists, an executor runs it).
            if time.monotonic() >= deadline:
                raise StateLocked(
                    f"run {workflow_id} was not created within {CREATE_WAIT:g}s "
                    "by the process holding its run lock",
                    workflow_id=workflow_id,
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
            continue
        runs._index(state)
        return state, True
