"""Idempotency keys: one start per (workflow, key), however often and wherever it is asked.

The database decides (DESIGN "Second wave"): the first request inserts a row
``(workflow_name, key) -> workflow_id`` under a unique constraint, with the id chosen
before the insert; every later request with that key reads the row. Then the run named
by the row is created if it does not exist yet (``create_if_absent``, under the run
lock), so:

* two requests racing on two hosts: one insert wins, both name the same run, and
  exactly one of them creates and enqueues it;
* a crash between the insert and the run's first checkpoint leaves a row naming a run
  that does not exist: the next request with the key creates it (with that id);
* the same key with other inputs is refused (``IdempotencyConflict``, 409 in the API);
* a key expires ``IDEMPOTENCY_RETENTION`` seconds after it was first used; then it
  starts a new run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import orjson
from django.db import IntegrityError, transaction
from django.utils import timezone

from wfstate.conf import conf
from wfstate.definitions import validate_inputs
from wfstate.exceptions import IdempotencyConflict, InvalidInputs
from wfstate.state import WorkflowState, new_workflow_id
from wfstate.stores import get_store
from wfstate.triggers._create import create_if_absent
from wfstate.triggers.models import IdempotencyKey

logger = logging.getLogger("wfstate.idempotency")

MAX_KEY_LENGTH = 255
# What an HTTP header carries safely: printable ASCII (the API's schema says the same).
_KEY = re.compile(r"[ -~]{1,255}")
# Test hook: SIGKILL this process right after the key is reserved, before the run
# exists (tests/test_idempotency.py proves a retry still gets a run).
CRASH_AFTER_RESERVE_ENV = "WFSTATE_TEST_CRASH_AFTER_RESERVE"


def inputs_digest(values: Mapping[str, Any]) -> str:
    """A stable digest of validated inputs (keys sorted), to compare two requests."""
    return hashlib.sha256(orjson.dumps(dict(values), option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_key(key: str) -> str:
    """Raises: InvalidInputs when the key is empty, too long or not printable."""
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise InvalidInputs(
            f"an idempotency key is 1 to {MAX_KEY_LENGTH} printable ASCII characters, not {key!r}",
            errors={"idempotency_key": ["1 to 255 printable ASCII characters"]},
        )
    return key


def _reserve(name: str, key: str, digest: str) -> tuple[IdempotencyKey, bool]:
    """The key's row, inserted now (True) or found (False). An expired row is replaced."""
    for _attempt in range(5):
        now = timezone.now()
        try:
            with transaction.atomic():
                row = IdempotencyKey.objects.create(
                    workflow_name=name,
                    key=key,
                    inputs_sha256=digest,
                    workflow_id=new_workflow_id(),
                    created_at=now,
                    expires_at=now + timedelta(seconds=conf.IDEMPOTENCY_RETENTION),
                )
            return row, True
        except IntegrityError:
            pass
        found = IdempotencyKey.objects.filter(workflow_name=name, key=key).first()
        if found is None:
            continue  # expired and deleted by another request meanwhile: insert again
        if found.expires_at <= now or (
            found.run_created and not get_store().exists(found.workflow_id)
        ):
            # Past retention, or its run was deleted since: the key may start a new run.
            # Delete exactly this row (a racer may have replaced it already), then
            # compete for the insert again.
            IdempotencyKey.objects.filter(pk=found.pk, expires_at=found.expires_at).delete()
            continue
        return found, False
    raise IdempotencyConflict(  # pragma: no cover - five expiries in a row
        f"idempotency key {key!r} of workflow {name} keeps changing hands; retry"
    )


def create_run_once(
    name: str,
    inputs: Mapping[str, Any] | None,
    *,
    key: str,
    coerce_strings: bool = False,
    started_by: Mapping[str, Any] | None = None,
) -> tuple[WorkflowState, bool]:
    """The run that ``key`` names for workflow ``name``, created now if need be.

    Returns ``(state, created)``: ``created`` is True for the one call that wrote the
    run's first checkpoint (it must hand the run on: execute or enqueue it).

    Raises:
        InvalidInputs (also for a malformed key), WorkflowNotFound, InvalidDefinition,
        IdempotencyConflict (the key was used with other inputs), StorageError.
    """
    from wfstate import runs

    check_key(key)
    definition = runs.get_definition(name)
    values = validate_inputs(definition, dict(inputs or {}), coerce_strings=coerce_strings)
    digest = inputs_digest(values)
    row, reserved = _reserve(definition.name, key, digest)
    if not reserved and row.inputs_sha256 != digest:
        raise IdempotencyConflict(
            f"idempotency key {key!r} already started run {row.workflow_id} of workflow "
            f"{definition.name} with other inputs",
            workflow_id=row.workflow_id,
        )
    if reserved and os.environ.get(CRASH_AFTER_RESERVE_ENV):
        os.kill(os.getpid(), signal.SIGKILL)
    by = dict(started_by or {"kind": "api"})
    by["idempotency_key"] = key
    state, created = create_if_absent(row.workflow_id, definition.name, values, started_by=by)
    if not row.run_created:
        IdempotencyKey.objects.filter(pk=row.pk).update(run_created=True)
    return state, created


def prune_expired(now: Any = None) -> int:
    """Delete keys past their retention; returns how many."""
    deleted, _ = IdempotencyKey.objects.filter(expires_at__lte=now or timezone.now()).delete()
    return deleted
