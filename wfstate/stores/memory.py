"""MemoryStore: the StateStore port in memory, for tests and dry runs.

States are kept as serialized bytes, so a loaded state is never the object that was
saved (the same aliasing rules as the file store). One process only.

Its options come from ``WFSTATE["STORE"]["OPTIONS"]`` only (no top-level setting is
passed to it): ``lock_timeout`` and ``max_bytes``.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from wfstate.exceptions import RunLocked, RunNotFound, StateLocked, StillRunning
from wfstate.records import RunLockOwner
from wfstate.state import WorkflowState, utcnow
from wfstate.stores.base import (
    StateStore,
    check_size,
    validate_id,
    validate_name,
    validate_signal_id,
)
from wfstate.stores.jsonfile import parse_state, serialize
from wfstate.stores.locks import describe_owner, owner_info


class MemoryStore(StateStore):
    """Runs in a dict of this process.

    Args:
        lock_timeout: seconds a writer waits for a write lock before ``StateLocked``.
        max_bytes: the largest serialized state ``save()`` accepts (None: no limit).
    """

    def __init__(self, *, lock_timeout: float = 10.0, max_bytes: int | None = None) -> None:
        self.lock_timeout = lock_timeout
        self.max_bytes = max_bytes
        self._states: dict[str, bytes] = {}
        self._outputs: dict[tuple[str, str, str], bytes] = {}
        self._cancel: set[str] = set()
        self._mailboxes: dict[str, dict[str, dict[str, Any]]] = {}
        self._write_locks: dict[str, threading.RLock] = {}
        self._run_owners: dict[str, RunLockOwner] = {}
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return "MemoryStore()"

    @contextlib.contextmanager
    def write_lock(self, workflow_id: str) -> Iterator[None]:
        validate_id(workflow_id)
        with self._guard:
            lock = self._write_locks.setdefault(workflow_id, threading.RLock())
        if not lock.acquire(timeout=self.lock_timeout):
            raise StateLocked(
                f"run {workflow_id}: write lock not acquired within {self.lock_timeout:g}s"
            )
        try:
            yield
        finally:
            lock.release()

    @contextlib.contextmanager
    def run_lock(self, workflow_id: str) -> Iterator[RunLockOwner]:
        validate_id(workflow_id)
        with self._guard:
            if workflow_id in self._run_owners:
                owner = self._run_owners[workflow_id]
                raise RunLocked(
                    f"run {workflow_id} is being executed by {describe_owner(owner)}",
                    owner=owner,
                )
            info = self._run_owners[workflow_id] = owner_info()
        try:
            yield info
        finally:
            with self._guard:
                self._run_owners.pop(workflow_id, None)

    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        return self._run_owners.get(validate_id(workflow_id))

    def save(self, state: WorkflowState, *, durable: bool = True) -> None:
        validate_id(state.workflow_id)
        with self.write_lock(state.workflow_id):
            previous = (state.revision, state.updated_at)
            state.revision += 1
            state.updated_at = utcnow()
            try:
                data = serialize(state)
                check_size(state.workflow_id, data, self.max_bytes)
            except BaseException:
                state.revision, state.updated_at = previous
                raise
            self._states[state.workflow_id] = data

    def load(self, workflow_id: str) -> WorkflowState:
        validate_id(workflow_id)
        try:
            data = self._states[workflow_id]
        except KeyError:
            raise RunNotFound(f"no run {workflow_id}") from None
        return parse_state(data, f"memory:{workflow_id}", workflow_id)

    def exists(self, workflow_id: str) -> bool:
        return validate_id(workflow_id) in self._states

    def delete(self, workflow_id: str) -> None:
        if not self.exists(workflow_id):
            raise RunNotFound(f"no run {workflow_id}")
        try:
            held = self.run_lock(workflow_id)
            held.__enter__()
        except RunLocked as exc:
            owner = exc.owner
            raise StillRunning(
                f"run {workflow_id} is being executed by {describe_owner(owner)}; "
                "cancel it before deleting it",
                workflow_id=workflow_id,
                owner=owner,
            ) from None
        try:
            with self.write_lock(workflow_id):
                if self._states.pop(workflow_id, None) is None:
                    raise RunNotFound(f"no run {workflow_id}")
                self._cancel.discard(workflow_id)
                self._mailboxes.pop(workflow_id, None)
                for key in [k for k in self._outputs if k[0] == workflow_id]:
                    del self._outputs[key]
        finally:
            held.__exit__(None, None, None)

    def raw_reader(self) -> Callable[[str], bytes | None]:
        return self._states.get

    def list(self) -> list[str]:
        return sorted(self._states)

    def request_cancel(self, workflow_id: str) -> None:
        self._cancel.add(validate_id(workflow_id))

    def cancel_requested(self, workflow_id: str) -> bool:
        return validate_id(workflow_id) in self._cancel

    def clear_cancel(self, workflow_id: str) -> None:
        self._cancel.discard(validate_id(workflow_id))

    def save_output(self, workflow_id: str, state_name: str, stream: str, data: bytes) -> str:
        key = (validate_id(workflow_id), validate_name(state_name), validate_name(stream))
        self._outputs[key] = bytes(data)
        return f"memory:{workflow_id}/{state_name}.{stream}"

    def load_output(self, workflow_id: str, state_name: str, stream: str) -> bytes:
        key = (validate_id(workflow_id), validate_name(state_name), validate_name(stream))
        try:
            return self._outputs[key]
        except KeyError:
            raise RunNotFound(f"no output {stream} of {state_name} in run {workflow_id}") from None

    def post_signal(self, workflow_id: str, record: dict[str, Any]) -> str:
        signal_id = validate_signal_id(record.get("id"))
        with self._guard:
            # A copy, as a file would be: the caller's dict is not the kept one.
            self._mailboxes.setdefault(validate_id(workflow_id), {})[signal_id] = dict(record)
        return f"memory:{workflow_id}/mailbox/{signal_id}"

    def pending_signals(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        with self._guard:
            return [dict(r) for r in self._mailboxes.get(validate_id(workflow_id), {}).values()]

    def remove_signal(self, workflow_id: str, signal_id: str) -> None:
        validate_signal_id(signal_id)
        with self._guard:
            self._mailboxes.get(validate_id(workflow_id), {}).pop(signal_id, None)
