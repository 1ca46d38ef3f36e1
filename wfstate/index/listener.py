"""The engine's listener: keeps the rows close behind the files while a run runs."""

from __future__ import annotations

import logging
import operator
import threading
import time
from typing import Any

from django.db import connections

from wfstate.index import rows
from wfstate.index.projection import CachedStepCounter, project
from wfstate.state import WorkflowState

logger = logging.getLogger("wfstate.index")

# What the projection reads of a step (``project``'s loop over ``states``).
_STEP_READ = operator.attrgetter("name", "status", "error")


class IndexListener:
    """Called by the engine after every checkpoint; keeps the rows close behind.

    The call itself only copies what the projection reads (in C, a few microseconds)
    and hands the copy to a flusher thread, which projects the copies it writes (most
    are coalesced away) and owns every database write of the listener, so an executor
    never waits on the database and never opens connections in its step threads:

    * a checkpoint that changes the run's status is written at once;
    * other checkpoints are coalesced: the latest one is written at most ``delay``
      seconds after the first one that is still pending (0.5 s by default), so a row is
      never more than about half a second behind its file;
    * :meth:`close` writes what is pending, stops the thread and closes its connection.

    Nothing raises into the run: failures are logged to ``wfstate.index``.
    """

    def __init__(self, *, delay: float = 0.5) -> None:
        self.delay = delay
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, Any]] = {}
        self._last_status: dict[str, str] = {}
        self._deadline: float | None = None
        self._queued = 0  # checkpoints handed over
        self._written = 0  # checkpoints written (or given up on)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._steps = CachedStepCounter()

    def __call__(self, state: WorkflowState) -> None:
        try:
            document = self._snapshot(state)
            with self._cond:
                if self._closed:
                    closed = True
                else:
                    closed = False
                    self._hand_over(state.workflow_id, document)
            if closed:
                # A checkpoint after close(): rare, written here rather than dropped.
                self._write(state.workflow_id, document)
        except Exception:
            logger.exception("could not index run %s", getattr(state, "workflow_id", "?"))

    @staticmethod
    def _snapshot(state: WorkflowState) -> dict[str, Any]:
        """What the projection reads, copied as it is at this checkpoint.

        The projection itself runs in the flusher thread, and only for the checkpoints
        it writes: the executor's thread pays for this copy, made in C, not for the
        projection. Of each step it takes what the projection reads of it (name,
        status, error: strings, which the engine replaces but cannot change in place).
        """
        # Parallel branches may add a step while we copy: try again.
        for attempt in range(3):
            try:
                document = state.shallow_dict()
                document["states"] = list(map(_STEP_READ, state.states.values()))
                return document
            except RuntimeError:  # dictionary changed size during iteration
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _hand_over(self, workflow_id: str, document: dict[str, Any]) -> None:
        now = time.monotonic()
        status = document["status"]
        status_changed = self._last_status.get(workflow_id) != status
        self._last_status[workflow_id] = status
        self._pending[workflow_id] = document
        self._queued += 1
        # The flusher is woken only when it has something new to do: a first pending
        # checkpoint, or a deadline moved to now. A quiet checkpoint joining a pending
        # batch is picked up at the deadline the flusher already waits for (waking it
        # on every checkpoint cost the executor a thread switch per step).
        wake = status_changed or self._deadline is None
        if status_changed:
            self._deadline = now
        elif self._deadline is None:
            self._deadline = now + self.delay
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="wfstate-index-flusher", daemon=True
            )
            self._thread.start()
        if wake:
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if not self._pending:
                        return  # closed and nothing left
                    while not self._closed and self._deadline is not None:
                        remaining = self._deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                    batch, self._pending = self._pending, {}
                    self._deadline = None
                    upto = self._queued
                for workflow_id, document in batch.items():
                    self._write(workflow_id, document)
                with self._cond:
                    self._written = upto
                    self._cond.notify_all()
        finally:
            # The connections this thread opened are its own: close them.
            connections.close_all()
            with self._cond:
                self._written = self._queued
                self._cond.notify_all()

    def _write(self, workflow_id: str, document: dict[str, Any]) -> None:
        try:
            document = {
                **document,
                "states": {
                    i: {"name": name, "status": status, "error": error}
                    for i, (name, status, error) in enumerate(document["states"])
                },
            }
            rows.upsert(workflow_id, project(document, self._steps))
        except Exception:
            logger.exception("could not index run %s", workflow_id)

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Write what is pending now; returns False if that took longer than ``timeout``."""
        with self._cond:
            target = self._queued
            if self._thread is None or self._written >= target:
                return True
            self._deadline = time.monotonic()
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._written >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is pending, then stop the flusher thread. Idempotent."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("the index flusher did not finish within %gs", timeout)

    def __enter__(self) -> IndexListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_listener(*, delay: float = 0.5) -> IndexListener:
    """The index listener the engine calls after each checkpoint (see IndexListener)."""
    return IndexListener(delay=delay)
