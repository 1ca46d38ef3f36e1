"""A step's output, whole or followed live: ``GET runs/{id}/steps/{state}/output/``.

**While a command step runs**, the executor's reader threads append what it prints to
``<id>.outputs/.<state>.<stream>.live`` (:class:`LiveOutput`), complete lines at a time
with every secret value masked (a secret is never on disk in clear, even for a
moment); the file is removed when the attempt ends, before the checkpoint that records
the step's result, and a new attempt starts a new file. It is a dot file of the outputs
directory, like the events log: a delete, a prune or ``doctor`` treat it like any side
file, and bundles leave it out.

**The stream** (:func:`stream` under WSGI, :func:`astream` under ASGI) is Server-Sent
Events: ``event: output`` with ``{"text": ...}`` for what was printed since,
``event: attempt`` with ``{"attempt": n}`` when a retry starts over, and ``event: end``
with the step's final status, sent once the rest of the output (from the state file,
or its whole-output side file when cut) has been sent. It polls the live file's size
and the state file's (size, mtime) every 100 ms: no database, no lock.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson

from wfstate import events
from wfstate.exceptions import RunNotFound
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores.base import StateStore, validate_name

STREAMS = ("stdout", "stderr")
FLUSH_PARTIAL = 65536  # a line longer than this is written before its newline


def live_path(store: StateStore, workflow_id: str, state_name: str, stream: str) -> Path | None:
    """Where the live output of a running step is, or None (no outputs directory, or a
    name unsafe in a file name)."""
    directory = store.outputs_dir(workflow_id)
    if directory is None:
        return None
    try:
        return directory / f".{validate_name(state_name)}.{validate_name(stream)}.live"
    except ValueError:
        return None


class LiveOutput:
    """The live copy of one attempt's output: called by ``run_command``'s reader threads
    with ``(stream, bytes)``; :meth:`close` removes the files when the attempt ends."""

    def __init__(
        self, store: StateStore, workflow_id: str, state_name: str, secrets: list[str]
    ) -> None:
        self.paths = {s: live_path(store, workflow_id, state_name, s) for s in STREAMS}
        self.secrets = secrets
        self.pending = dict.fromkeys(STREAMS, b"")
        self.fds: dict[str, int] = {}
        self._guard = threading.Lock()

    def __call__(self, stream: str, data: bytes) -> None:
        with self._guard:
            data = self.pending[stream] + data
            if self.secrets:
                # Whole lines only, so that a secret split across two reads is still
                # masked (a secret never spans a line).
                cut = data.rfind(b"\n") + 1
                if cut == 0 and len(data) < FLUSH_PARTIAL:
                    self.pending[stream] = data
                    return
                cut = cut or len(data)
                data, self.pending[stream] = data[:cut], data[cut:]
            self._write(stream, data)

    def _write(self, stream: str, data: bytes) -> None:
        if not data:
            return
        if self.secrets:
            from wfstate import secrets

            text = secrets.mask(data.decode("utf-8", errors="replace"), self.secrets)
            data = text.encode("utf-8")
        fd = self.fds.get(stream)
        if fd is None:
            path = self.paths[stream]
            if path is None or path.parent.is_symlink():
                return  # never write through a link planted in the storage directory
            if not path.parent.is_dir():
                path.parent.mkdir(mode=0o700, exist_ok=True)
            # O_TRUNC: a file left by an executor that was killed is an older attempt's.
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW
            fd = self.fds[stream] = os.open(path, flags, 0o600)
        os.write(fd, data)

    def close(self) -> None:
        """Remove the live files (the step's result is about to be checkpointed)."""
        with self._guard:
            for stream, fd in self.fds.items():
                os.close(fd)
                path = self.paths[stream]
                if path is not None:
                    with contextlib.suppress(OSError):
                        path.unlink()
            self.fds.clear()


def live_output(
    store: StateStore, workflow_id: str, state_name: str, secrets: list[str]
) -> LiveOutput | None:
    """The live output of an attempt of ``state_name``, or None where it cannot be kept."""
    if live_path(store, workflow_id, state_name, "stdout") is None:
        return None
    return LiveOutput(store, workflow_id, state_name, secrets)


# --- reading it -----------------------------------------------------------------------------


def known_step(state: WorkflowState, state_name: str) -> bool:
    """True if ``state_name`` has run in ``state`` or is a state of its workflow."""
    if state_name in state.states:
        return True
    from wfstate.definitions import get_registry

    try:
        return state_name in get_registry().get(state.workflow_name).states
    except Exception:  # an unknown workflow: only the steps that ran are known
        return False


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()  # a call step's JSON result


def final_output(store: StateStore, state: WorkflowState, state_name: str, stream: str) -> str:
    """The whole output of a step that has run (its side file when the state has it cut).

    Raises:
        RunNotFound: the run has no step ``state_name`` (or it has not started).
        ValueError: ``stream`` is not ``stdout`` or ``stderr``.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}: stdout or stderr")
    entry = state.states.get(state_name)
    if entry is None:
        raise RunNotFound(f"state '{state_name}' of run {state.workflow_id} has not run")
    value = entry.output if stream == "stdout" else entry.stderr
    if entry.output_truncated:
        with contextlib.suppress(RunNotFound, ValueError):
            data = store.load_output(state.workflow_id, state_name, stream)
            return data.decode("utf-8", errors="replace")
    return _text(value)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


class OutputFollower:
    """What the stream of one step's output has sent, and what to send next."""

    def __init__(self, store: StateStore, workflow_id: str, state_name: str, stream: str) -> None:
        self.store = store
        self.workflow_id = workflow_id
        self.state_name = state_name
        self.stream = stream
        self.live = live_path(store, workflow_id, state_name, stream)
        self.file = store.path_for(workflow_id)
        self.file_stat: tuple[int, int] | None = None
        self.attempt: int | None = None
        self.inode: int | None = None
        self.sent = 0  # bytes of this attempt's output sent
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ended = False

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.file) if self.file is not None else None
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns) if st is not None else None

    def _restart(self, attempt: int, out: list[bytes]) -> None:
        if self.attempt is not None and attempt != self.attempt:
            out.append(_event("attempt", {"attempt": attempt}))
            self.sent = 0
            self.decoder.reset()
        self.attempt = attempt

    def poll(self) -> list[bytes]:
        """The events to send now (and the end of the stream when the step has ended)."""
        out: list[bytes] = []
        stat = self._stat()
        state = None
        # A store without files (self.file None) has no cheap "changed?": load each poll.
        if stat != self.file_stat or self.file is None:
            self.file_stat = stat
            with contextlib.suppress(Exception):
                state = self.store.load(self.workflow_id)
        if state is not None:
            entry = state.states.get(self.state_name)
            if entry is not None:
                self._restart(entry.attempt, out)
            step_over = entry is not None and entry.status != StepStatus.RUNNING
            if step_over or RunStatus(state.status).is_final:
                # The rest comes from the state: the live file is gone by now.
                text = (
                    final_output(self.store, state, self.state_name, self.stream) if entry else ""
                )
                rest = text.encode("utf-8")[self.sent :]
                if rest:
                    out.append(_event("output", {"text": self.decoder.decode(rest, final=True)}))
                status = str(entry.status) if entry is not None else str(state.status)
                out.append(_event("end", {"status": status}))
                self.ended = True
                return out
        if self.live is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.live)
                if st.st_ino != self.inode:
                    if self.inode is not None:
                        self.sent = 0  # a new attempt's file
                        self.decoder.reset()
                    self.inode = st.st_ino
                if st.st_size > self.sent:
                    with open(self.live, "rb") as fh:
                        fh.seek(self.sent)
                        chunk = fh.read(st.st_size - self.sent)
                    self.sent += len(chunk)
                    text = self.decoder.decode(chunk)
                    if text:
                        out.append(_event("output", {"text": text}))
        return out


def stream(
    store: StateStore, workflow_id: str, state_name: str, which: str, lifetime: float
) -> Iterator[bytes]:
    """A step's output as SSE under WSGI (see ``events.sse_stream``)."""
    return events.sse_stream(OutputFollower(store, workflow_id, state_name, which), lifetime)


def astream(
    store: StateStore, workflow_id: str, state_name: str, which: str
) -> AsyncIterator[bytes]:
    """A step's output as SSE under ASGI (see ``events.sse_astream``)."""
    return events.sse_astream(OutputFollower(store, workflow_id, state_name, which))
