"""The StateStore port (docs/storage.md).

A store knows nothing of Django: it takes its options in its constructor, so it can be
built in a spawned process, a benchmark or a test without settings.
"""

from __future__ import annotations

import builtins
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from wfstate.exceptions import InvalidRunId, StorageError
from wfstate.state import WorkflowState

# The only form a run id may take: a canonical, lower-case UUID4. Checked before any
# path is built, so no id can traverse, be absolute, hold a NUL or be overlong.
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")

# A state or stream name used in a side-file name (state names are checked by the
# definition schema too; this is the store's own line of defence).
_SIGNAL_ID = re.compile(r"[0-9a-f]{32}")

_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def validate_id(workflow_id: object) -> str:
    """Return ``workflow_id`` if it is a canonical UUID4 string.

    Raises:
        InvalidRunId: anything else (its repr is cut short in the message).
    """
    if not isinstance(workflow_id, str) or not _UUID4.fullmatch(workflow_id):
        shown = repr(workflow_id)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise InvalidRunId(f"invalid run id {shown}: a run id is a UUID4 string")
    return workflow_id


def validate_signal_id(signal_id: object) -> str:
    """Return ``signal_id`` if it is 32 lower-case hex digits (a uuid4's hex).

    Raises:
        ValueError: anything else (it becomes part of a file name).
    """
    if not isinstance(signal_id, str) or not _SIGNAL_ID.fullmatch(signal_id):
        raise ValueError(f"invalid signal id {signal_id!r}")
    return signal_id


def validate_name(name: str) -> str:
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"unsafe name for a side file: {name!r}")
    return name


class StateStore(ABC):
    """Where runs' states live. Subclasses implement the abstract methods."""

    @abstractmethod
    def save(self, state: WorkflowState, *, durable: bool = True) -> None:
        """Write ``state`` as the run's new revision (``state.revision`` += 1).

        With ``durable=False`` the write is atomic but not fsynced (see docs/storage.md
        for which checkpoints use it).

        Raises:
            InvalidRunId: the state's id is not a UUID4.
            StateLocked: the write lock was not acquired within the lock timeout.
            StorageError: the write failed; the previous file is intact.
        """

    @abstractmethod
    def load(self, workflow_id: str) -> WorkflowState:
        """Read a run's state.

        Raises:
            InvalidRunId, RunNotFound, CorruptState, StorageError.
        """

    @abstractmethod
    def delete(self, workflow_id: str) -> None:
        """Remove the run's state and side files.

        Raises:
            RunNotFound, StillRunning (an executor holds the run lock), StateLocked.
        """

    @abstractmethod
    def list(self) -> list[str]:
        """The ids of all stored runs, sorted."""

    @abstractmethod
    def exists(self, workflow_id: str) -> bool: ...

    @abstractmethod
    def write_lock(self, workflow_id: str) -> AbstractContextManager[None]:
        """Hold the run's write lock around a read-modify-write (re-entrant per thread).

        Raises:
            StateLocked: not acquired within the lock timeout.
        """

    @abstractmethod
    def run_lock(self, workflow_id: str) -> AbstractContextManager[dict[str, Any]]:
        """Hold the run lock for a whole execution; yields the recorded owner info.

        Raises:
            RunLocked: another executor holds it; the message names its pid and host.
        """

    @abstractmethod
    def run_lock_owner(self, workflow_id: str) -> dict[str, Any] | None:
        """Who executes the run right now (pid, host, since), or None."""

    # --- cancellation requests (a marker the executor polls) ---------------------------

    @abstractmethod
    def request_cancel(self, workflow_id: str) -> None: ...

    @abstractmethod
    def cancel_requested(self, workflow_id: str) -> bool: ...

    @abstractmethod
    def clear_cancel(self, workflow_id: str) -> None: ...

    # --- big outputs -------------------------------------------------------------------

    @abstractmethod
    def save_output(self, workflow_id: str, state_name: str, stream: str, data: bytes) -> str:
        """Keep a whole step output beside the state; returns where (for messages)."""

    @abstractmethod
    def load_output(self, workflow_id: str, state_name: str, stream: str) -> bytes:
        """Raises: RunNotFound when no such side file exists."""

    # --- signals: a run's mailbox (see wfstate.engine.waits) -----------------------------
    #
    # Not abstract: a store without a mailbox still runs every workflow that does not
    # wait for signals; sending one to it is a clear error, never a silent loss.

    def post_signal(self, workflow_id: str, record: dict[str, Any]) -> str:
        """Keep a signal for the run until its executor takes it; durable on return.

        ``record`` holds at least ``id`` (unique, ``[0-9a-f]{32}``), ``signal``,
        ``payload``, ``sender`` and ``received_at``. Returns where it was kept.

        Raises:
            StorageError: the store has no mailbox, or the write failed.
        """
        raise StorageError(f"{self!r} has no signal mailbox: signals cannot be kept")

    def pending_signals(self, workflow_id: str) -> builtins.list[dict[str, Any]]:
        """The run's signals not yet taken, oldest first."""
        return []

    def remove_signal(self, workflow_id: str, signal_id: str) -> None:
        """Forget a signal once its id is durably in the run's state (idempotent)."""
        return None

    # --- maintenance ---------------------------------------------------------------------

    def sweep(self) -> builtins.list[str]:
        """Remove leftover temp files of interrupted writes; returns what was removed."""
        return []

    def update(
        self, workflow_id: str, mutate: Callable[[WorkflowState], object], *, durable: bool = True
    ) -> WorkflowState:
        """Load, mutate and save a run under its write lock (no lost updates).

        ``mutate`` changes the state in place; whatever it returns is ignored.

        Raises:
            RunNotFound, CorruptState, StateLocked, StorageError.
        """
        with self.write_lock(workflow_id):
            state = self.load(workflow_id)
            mutate(state)
            self.save(state, durable=durable)
            return state

    def iter_states(self) -> Iterator[tuple[str, WorkflowState | Exception]]:
        """Every run with its state, or the error that loading it raised."""
        for workflow_id in self.list():
            try:
                yield workflow_id, self.load(workflow_id)
            except Exception as exc:  # reported per run, never fatal
                yield workflow_id, exc
