"""The StateStore port (docs/storage.md): the whole contract a store is held to.

A store knows nothing of Django: it takes its options in its constructor, so it can be
built in a spawned process, a benchmark or a test without settings. Everything the
engine, the index, ``doctor``, the admin and the commands ask of a store is declared on
:class:`StateStore`: the abstract methods every store implements, and the optional
ones (files on disk, temp files, quarantine, a fast read for ``sync``) with safe
defaults, so no caller probes a store with ``getattr`` or ``isinstance``.
docs/storage.md ("Writing a store") walks through it; ``tests/contract_store.py`` is a
store written from it alone.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import socket
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, ClassVar

from wfstate.exceptions import InvalidRunId, RunLocked, RunNotFound, StateTooLarge, StorageError
from wfstate.records import RunLockOwner
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
    """Return ``name`` if it is safe in a side file's name (a state or stream name).

    Raises:
        ValueError: anything else (a separator, ``..``, an odd character, too long).
    """
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"unsafe name for a side file: {name!r}")
    return name


def check_size(workflow_id: str, data: bytes | Sequence[bytes], max_bytes: int | None) -> None:
    """Refuse a serialized state a store would refuse to read back.

    Called by ``save()`` before anything is written: a store never writes what its own
    ``load()`` would report corrupt.

    Raises:
        StateTooLarge: ``data`` (or its pieces together) is longer than ``max_bytes``.
    """
    if max_bytes is None:
        return
    size = len(data) if isinstance(data, bytes) else sum(map(len, data))
    if size > max_bytes:
        raise StateTooLarge(
            f"run {workflow_id}: the state would be {size} bytes, more than the "
            f"{max_bytes} a state may be; nothing was written (keep big outputs in files, "
            "or raise the store's max_bytes option)",
            workflow_id=workflow_id,
            size=size,
            limit=max_bytes,
        )


class StateStore(ABC):
    """Where runs' states live: the contract every store is held to.

    **Building.** ``get_store()`` calls the class with ``WFSTATE["STORE"]["OPTIONS"]``
    as keyword arguments. A store that also takes some of the top-level settings
    (``STORAGE_DIR``, ``LOCK_TIMEOUT``...) says so in :attr:`setting_options`; no other
    setting is ever passed, so a constructor needs no ``**kwargs`` catch-all.

    **Must implement** (abstract): ``save``, ``load``, ``delete``, ``list``, ``exists``,
    ``write_lock``, ``run_lock``, ``run_lock_owner``, the cancellation markers
    (``request_cancel``, ``cancel_requested``, ``clear_cancel``) and the big outputs
    (``save_output``, ``load_output``). Every method taking a ``workflow_id`` checks it
    with :func:`validate_id` first; names of side files go through :func:`validate_name`.

    **May override** (safe defaults here): ``update`` and ``iter_states`` (built on the
    above), ``path_for`` and ``outputs_dir`` (where things are on disk, for messages:
    None when the store has no files), ``temp_files`` and ``sweep`` (leftovers of
    interrupted writes, for ``doctor``), ``quarantine`` (moving a corrupt state aside,
    for ``doctor --fix``) and ``raw_reader`` (a fast read of the stored documents, for
    ``sync``).

    **Semantics** (tests/test_stores.py holds every store to them):

    * a saved state is never aliased: ``load()`` returns a new object each time;
    * ``save()`` raises ``revision`` by one, and raises ``StateTooLarge`` before writing
      anything if the store would refuse to read the document back (:func:`check_size`);
    * the write lock is re-entrant per thread, waits up to the store's lock timeout and
      then raises ``StateLocked``; the run lock never waits (``RunLocked`` names the
      holder) and is taken before any write lock, never inside one;
    * ``delete()`` holds the run lock (so no executor can start meanwhile) and the write
      lock while it removes the run and everything kept for it, and refuses with
      ``StillRunning`` if an executor holds the run lock;
    * nothing is left behind for a run that does not exist: taking a lock of an unknown
      run (a 404 resume, a task for a deleted run) keeps nothing once released.
    """

    #: Constructor options this store takes from top-level ``WFSTATE`` settings, as
    #: ``{option: setting}`` (e.g. ``{"root": "STORAGE_DIR"}``). ``STORE["OPTIONS"]``
    #: wins over them. Empty: the store gets ``STORE["OPTIONS"]`` only.
    setting_options: ClassVar[dict[str, str]] = {}

    #: The largest serialized state the store accepts (None: no limit).
    max_bytes: int | None = None

    @classmethod
    def options_from_settings(
        cls, setting: Callable[[str], Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        """The constructor's keyword arguments: the :attr:`setting_options` read with
        ``setting(name)``, then ``options`` (``STORE["OPTIONS"]``) over them."""
        merged = {option: setting(name) for option, name in cls.setting_options.items()}
        merged.update(options)
        return merged

    @abstractmethod
    def save(self, state: WorkflowState, *, durable: bool = True) -> None:
        """Write ``state`` as the run's new revision (``state.revision`` += 1).

        With ``durable=False`` the write is atomic but not fsynced (see docs/storage.md
        for which checkpoints use it). On any error nothing was written and
        ``state.revision`` is what it was.

        Raises:
            InvalidRunId: the state's id is not a UUID4.
            StateLocked: the write lock was not acquired within the lock timeout.
            StateTooLarge: the document is larger than ``max_bytes``; nothing written.
            StorageError: the write failed; the previous file is intact.
        """

    @abstractmethod
    def load(self, workflow_id: str) -> WorkflowState:
        """Read a run's state (a new object each time).

        Raises:
            InvalidRunId, RunNotFound, CorruptState (naming where), StorageError.
        """

    @abstractmethod
    def delete(self, workflow_id: str) -> None:
        """Remove the run's state and everything kept for it (outputs, markers, locks).

        Holds the run lock (taken without waiting) and the write lock while it does.

        Raises:
            RunNotFound, StillRunning (an executor holds the run lock), StateLocked.
        """

    @abstractmethod
    def list(self) -> list[str]:
        """The ids of all stored runs, sorted."""

    @abstractmethod
    def exists(self, workflow_id: str) -> bool:
        """Whether the run has a stored state (corrupt or not).

        Raises:
            InvalidRunId.
        """

    @abstractmethod
    def write_lock(self, workflow_id: str) -> AbstractContextManager[None]:
        """Hold the run's write lock around a read-modify-write (re-entrant per thread).

        Raises:
            StateLocked: not acquired within the lock timeout.
        """

    @abstractmethod
    def run_lock(self, workflow_id: str) -> AbstractContextManager[RunLockOwner]:
        """Hold the run lock for a whole execution; yields the recorded owner info
        (``pid``, ``host``, ``since``). Released, it keeps nothing for a run that does
        not exist.

        Raises:
            RunLocked: another executor holds it; the message names its pid and host.
        """

    @abstractmethod
    def run_lock_owner(self, workflow_id: str) -> RunLockOwner | None:
        """Who executes the run right now (a ``wfstate.records.RunLockOwner``: pid, host,
        since), ``wfstate.records.unknown_owner()`` (pid 0) when it is held by somebody
        who says nothing (yet), or None when nobody does."""

    # --- cancellation requests (a marker the executor polls) ---------------------------

    @abstractmethod
    def request_cancel(self, workflow_id: str) -> None:
        """Leave a cancellation request for the run's executor (idempotent)."""

    @abstractmethod
    def cancel_requested(self, workflow_id: str) -> bool:
        """Whether a cancellation request is pending (polled by the executor)."""

    @abstractmethod
    def clear_cancel(self, workflow_id: str) -> None:
        """Remove a cancellation request (idempotent)."""

    # --- big outputs -------------------------------------------------------------------

    @abstractmethod
    def save_output(self, workflow_id: str, state_name: str, stream: str, data: bytes) -> str:
        """Keep a whole step output beside the state, byte for byte; returns where (for
        messages).

        Raises:
            StorageError: it could not be written.
        """

    @abstractmethod
    def load_output(self, workflow_id: str, state_name: str, stream: str) -> bytes:
        """The bytes ``save_output`` kept.

        Raises:
            RunNotFound: no such output.
        """

    # --- append-only side files: a loop's finished iterations (optional) ---------------
    #
    # The defaults keep the records as an output (``save_output``/``load_output``), so a
    # store that implements only the abstract methods still runs loops; each append then
    # rewrites the whole file, which a real store avoids (JSONFileStore appends).

    def append_records(self, workflow_id: str, name: str, data: bytes) -> None:
        """Append framed records (:mod:`wfstate.stores.records`) to the side file ``name``,
        durably (fsynced before returning), under the run's write lock.

        Raises:
            InvalidRunId, StateLocked, StorageError.
        """
        with self.write_lock(workflow_id):
            old = self.read_records(workflow_id, name)
            self.save_output(workflow_id, name, "records", old + data)

    def read_records(self, workflow_id: str, name: str) -> bytes:
        """The bytes of the side file ``name`` (empty if it does not exist).

        Raises:
            InvalidRunId, StorageError.
        """
        try:
            return self.load_output(workflow_id, name, "records")
        except RunNotFound:
            return b""

    def truncate_records(self, workflow_id: str, name: str, size: int) -> None:
        """Cut the side file ``name`` to ``size`` bytes (drops a torn or unacknowledged tail).

        Raises:
            InvalidRunId, StateLocked, StorageError.
        """
        with self.write_lock(workflow_id):
            data = self.read_records(workflow_id, name)
            if len(data) > size:
                self.save_output(workflow_id, name, "records", data[:size])

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

    # --- where things are (optional: None for a store without files) ------------------

    def path_for(self, workflow_id: str) -> Path | None:
        """The file holding the run's state, for messages and operators; None when the
        store keeps no file per run.

        Raises:
            InvalidRunId.
        """
        validate_id(workflow_id)
        return None

    def outputs_dir(self, workflow_id: str) -> Path | None:
        """The directory holding the run's whole outputs (``save_output``), for the
        admin's run page; None when the store keeps them elsewhere.

        Raises:
            InvalidRunId.
        """
        validate_id(workflow_id)
        return None

    def loops_dir(self, workflow_id: str) -> Path | None:
        """The directory holding the run's loop side files (``append_records``), for
        operators; None when the store keeps them elsewhere (the default: with the
        outputs).

        Raises:
            InvalidRunId.
        """
        validate_id(workflow_id)
        return None

    # --- maintenance (optional) ----------------------------------------------------------

    def temp_files(self) -> builtins.list[Path]:
        """Leftovers of interrupted writes that ``sweep()`` would remove (for ``doctor``)."""
        return []

    def sweep(self) -> builtins.list[str]:
        """Remove leftover temp files of interrupted writes; returns what was removed.

        A write in progress is never swept from under its writer.
        """
        return []

    def quarantine(self, workflow_id: str) -> str | None:
        """Move a corrupt state aside (never deleting it), with what is kept for it.

        Checks again under the write lock: a state that loads now (repaired, or
        rewritten by a writer) stays, and None is returned; so does a run that is gone.
        Returns where the state went. The default keeps it where it is (None): ``doctor``
        then keeps reporting it.

        Raises:
            StorageError: it could not be moved.
        """
        validate_id(workflow_id)
        return None

    def orphan_side_files(self, *, grace: float = 2.0) -> dict[str, builtins.list[str]]:
        """What a run left beside it (outputs, markers, lock sidecars) when it has no
        state any more (a delete or a prune killed midway): run id -> paths, for
        ``doctor``. Files touched in the last ``grace`` seconds are left out (a run being
        created makes its sidecar just before its state). Default: none."""
        return {}

    def remove_orphan_side_files(
        self, orphans: Mapping[str, builtins.list[str]]
    ) -> builtins.list[str]:
        """Remove what ``orphan_side_files`` found, each run under its write lock (taken
        without waiting) and only while it still has no state. Returns the run ids
        cleaned. Default: nothing to remove."""
        return []

    def slot_lock(self, name: str) -> AbstractContextManager[RunLockOwner]:
        """A named lock taken without waiting, held like a run lock (a dead holder's is
        free): a concurrency slot of ``wfstate.triggers.concurrency``. ``name`` is
        ``slot-<hex>-<n>``, never a run id.

        The default keeps slots in this process (enough for one process, as with
        ``MemoryStore``); a store shared by processes or hosts overrides it with its
        lock backend.

        Raises:
            RunLocked: somebody holds it.
        """
        return _local_slot(name)

    def slot_free(self, name: str) -> bool:
        """Nobody holds the slot ``name`` now (a hint: it may be taken the next moment)."""
        lock = _local_slots.get(name)
        return lock is None or not lock.locked()

    def raw_reader(self) -> Callable[[str], bytes | None] | None:
        """A fast read of stored documents for ``sync``, or None (the default) to have
        ``sync`` call ``load()`` for every run.

        The function takes a run id and returns the stored state document's bytes (the
        JSON of SPEC §4), or None for anything unusual (missing, too big, odd), which
        ``sync`` then hands to ``load()`` to report precisely. It takes no lock, and
        must be safe to call in a forked child process (``sync`` reads in one).
        """
        return None

    # --- built on the above ----------------------------------------------------------------

    def update(
        self, workflow_id: str, mutate: Callable[[WorkflowState], object], *, durable: bool = True
    ) -> WorkflowState:
        """Load, mutate and save a run under its write lock (no lost updates).

        ``mutate`` changes the state in place; whatever it returns is ignored.

        Raises:
            RunNotFound, CorruptState, StateLocked, StateTooLarge, StorageError.
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


# The default slots (``StateStore.slot_lock``): in this process only.
_local_slots: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


@contextlib.contextmanager
def _local_slot(name: str) -> Iterator[RunLockOwner]:
    with _local_guard:
        lock = _local_slots.setdefault(name, threading.Lock())
    if not lock.acquire(blocking=False):
        raise RunLocked(f"slot {name} is held", workflow_id=name)
    try:
        yield {"pid": os.getpid(), "host": socket.gethostname(), "since": ""}
    finally:
        lock.release()
