"""Live progress: one event per checkpoint, for ``GET runs/{id}/events/`` (SSE).

The state file holds only its latest revision, and a poller would miss revisions
written close together (a step's end and the next one's start). So each execution
appends one line per checkpoint to ``<id>.outputs/.events`` (a checkpoint listener,
like the index's: the engine knows nothing of it): ``{"revision", "status",
"current_state", "steps": [changed steps]}``. The first write of a run
(``create_run``) is logged too. The stream sends the lines after ``Last-Event-ID``,
then polls the log's size and the state file's (size, mtime) cheaply; a revision
written outside an execution (a cancel, a rewind) is sent from the file itself. The
log lives in the outputs directory, so a delete, a prune or a bundle's outputs
(which skip dot files) treat it like any side file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from wfstate.engine.events import CHECKPOINT_TIMING
from wfstate.state import RunStatus, StepWatch, WorkflowState
from wfstate.stores.base import StateStore

LOG_NAME = ".events"
POLL = 0.1  # seconds between two looks at the log and the file
KEEPALIVE = 15.0  # an SSE comment this often keeps proxies from closing the stream
WSGI_LIFETIME = 300.0  # a WSGI stream ends after this; the client reconnects (docs)

_FINAL = ("completed", "failed", "cancelled")


def log_path(store: StateStore, workflow_id: str) -> Path | None:
    directory = store.outputs_dir(workflow_id)
    return directory / LOG_NAME if directory is not None else None


def event_of(state: WorkflowState, changed: list[str]) -> dict[str, Any]:
    return {
        "revision": state.revision,
        "status": str(state.status),
        "current_state": state.current_state,
        "steps": [
            {
                "name": name,
                "status": str(state.states[name].status),
                "attempt": state.states[name].attempt,
            }
            for name in changed
            if name in state.states
        ],
    }


class EventLog:
    """A checkpoint listener appending one line per revision (called under the
    executor's lock, from any branch's thread)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        # The steps whose status, attempt or end changed since the last checkpoint.
        self.watch = StepWatch()
        self.fd: int | None = None
        self._guard = threading.Lock()

    def __call__(self, state: WorkflowState) -> None:
        with self._guard:
            changed = self.watch.changed(state.states)
            # The executor timed this checkpoint's write just before calling us (same
            # thread): the metrics' checkpoint latency histogram reads it from the log.
            seconds = getattr(CHECKPOINT_TIMING, "seconds", None)
            CHECKPOINT_TIMING.seconds = None
            append(self.store, state, changed, self, seconds)

    def close(self) -> None:
        with self._guard:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def append(
    store: StateStore,
    state: WorkflowState,
    changed: list[str],
    log: EventLog | None = None,
    checkpoint_seconds: float | None = None,
) -> None:
    """Append the event of ``state``'s revision to its log (never fatal); with
    ``checkpoint_seconds``, how long its write took (``checkpoint_ms``, for metrics)."""
    fd = log.fd if log is not None else None
    # The path only for the first line of an execution (the descriptor is kept).
    path = log_path(store, state.workflow_id) if fd is None else None
    if fd is None and path is None:
        return
    event = event_of(state, changed)
    if checkpoint_seconds is not None:
        event["checkpoint_ms"] = round(checkpoint_seconds * 1000, 3)
    line = orjson.dumps(event) + b"\n"
    with contextlib.suppress(OSError):
        if fd is None:
            assert path is not None
            if path.parent.is_symlink():
                return  # never write through a link planted in the storage directory
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            if log is not None:
                log.fd = fd
        try:
            os.write(fd, line)
        finally:
            if log is None:
                os.close(fd)


@contextlib.contextmanager
def logging_events(store: StateStore) -> Iterator[list[Callable[[WorkflowState], None]]]:
    """The checkpoint listener of one execution."""
    log = EventLog(store)
    try:
        yield [log]
    finally:
        log.close()


# --- the stream ------------------------------------------------------------------------------


def _format(event: dict[str, Any], name: str = "checkpoint") -> bytes:
    return (
        f"id: {event['revision']}\nevent: {name}\n".encode()
        + b"data: "
        + orjson.dumps(event)
        + b"\n\n"
    )


class Follower:
    """What the stream of one run has sent, and what it should send next."""

    def __init__(self, store: StateStore, workflow_id: str, last_id: int) -> None:
        self.store = store
        self.workflow_id = workflow_id
        self.last = last_id
        self.offset = 0
        self.buffer = b""
        self.log = log_path(store, workflow_id)
        self.file = store.path_for(workflow_id)
        self.file_stat: tuple[int, int] | None = None
        self.ended = False

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.file) if self.file is not None else None
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns) if st is not None else None

    def poll(self) -> list[bytes]:
        """The events to send now (and the end of the stream when the run has ended)."""
        out: list[bytes] = []
        final_status = None
        if self.log is not None:
            with contextlib.suppress(OSError):
                # A stat per poll; the log is opened only when it has grown.
                if os.stat(self.log).st_size > self.offset:
                    with open(self.log, "rb") as fh:
                        fh.seek(self.offset)
                        chunk = fh.read()
                    self.offset += len(chunk)
                    self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for raw in lines:
            with contextlib.suppress(orjson.JSONDecodeError):
                event = orjson.loads(raw)
                if event["revision"] > self.last:
                    out.append(_format(event))
                    self.last = event["revision"]
                final_status = event["status"] if event["status"] in _FINAL else None
        stat = self._stat()
        if stat != self.file_stat:
            self.file_stat = stat
            try:
                state = self.store.load(self.workflow_id)
            except Exception:
                state = None
            if state is not None and state.revision > self.last:
                if self._log_behind(state):
                    self.file_stat = None  # look again at the next poll
                else:
                    out.append(_format(event_of(state, [])))
                    self.last = state.revision
            if state is not None and RunStatus(state.status).is_final:
                final_status = str(state.status) if state.revision <= self.last else None
        if final_status is not None:
            out.append(
                f"event: end\ndata: {orjson.dumps({'status': final_status}).decode()}\n\n".encode()
            )
            self.ended = True
        return out

    def _log_behind(self, state: WorkflowState) -> bool:
        """True when the log should soon hold this revision (an execution is writing)."""
        try:
            return self.store.run_lock_owner(self.workflow_id) is not None
        except Exception:
            return False


class Polled(Protocol):
    """What an SSE stream follows: new events at each ``poll()``, until ``ended``."""

    ended: bool

    def poll(self) -> list[bytes]: ...


def sse_stream(follower: Polled, lifetime: float) -> Iterator[bytes]:
    """An SSE stream under WSGI: a thread per client, for at most ``lifetime`` seconds
    (the client reconnects, with ``Last-Event-ID``, and loses nothing)."""
    yield b"retry: 1000\n\n"
    deadline = time.monotonic() + lifetime
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        events = follower.poll()
        if events:
            yield b"".join(events)
            quiet_since = time.monotonic()
        if follower.ended:
            return
        if time.monotonic() - quiet_since > KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        time.sleep(POLL)


async def sse_astream(follower: Polled) -> AsyncIterator[bytes]:
    """An SSE stream under ASGI: no thread held between polls."""
    import asyncio

    yield b"retry: 1000\n\n"
    quiet_since = time.monotonic()
    while True:
        events = follower.poll()
        if events:
            yield b"".join(events)
            quiet_since = time.monotonic()
        if follower.ended:
            return
        if time.monotonic() - quiet_since > KEEPALIVE:
            yield b": keep-alive\n\n"
            quiet_since = time.monotonic()
        await asyncio.sleep(POLL)


def stream(store: StateStore, workflow_id: str, last_id: int, lifetime: float) -> Iterator[bytes]:
    """A run's checkpoints as SSE under WSGI (see :func:`sse_stream`)."""
    return sse_stream(Follower(store, workflow_id, last_id), lifetime)


def astream(store: StateStore, workflow_id: str, last_id: int) -> AsyncIterator[bytes]:
    """A run's checkpoints as SSE under ASGI (see :func:`sse_astream`)."""
    return sse_astream(Follower(store, workflow_id, last_id))
