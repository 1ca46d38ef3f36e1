"""Running one attempt of a step: a shell command or a Python callable.

A command runs as ``/bin/sh -c`` in a process group of its own, so a timeout or a
cancellation kills the shell *and* everything it started. While it runs we poll every
100 ms for a cancellation request or the timeout; ``communicate()`` keeps collecting
output across polls (retrying it after ``TimeoutExpired`` loses nothing).

If the executor itself dies, the group would live on: the shell is started with a
parent-death signal, and every process of the step carries a token in its environment,
recorded in the step's result, so that the next holder of the run lock finds and kills
them (``processes.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from django.utils.module_loading import import_string

from wfstate.engine.processes import TOKEN_VARIABLE, new_token, with_pdeathsig

logger = logging.getLogger("wfstate.engine")

POLL_INTERVAL = 0.1
# After SIGTERM, how long a process group gets to exit before SIGKILL. Short: the
# whole cancellation must be recorded within 2 seconds.
KILL_GRACE = 0.5


class StepCancelled(Exception):
    """Raised by ``ctx.check_cancelled()`` inside a call step when the run is cancelled."""


@dataclass
class AttemptResult:
    ok: bool
    output: Any = None
    stderr: str | None = None
    exit_code: int | None = None
    error: str | None = None
    traceback: str | None = None
    cancelled: bool = False
    timed_out: bool = False
    # What a command wrote, byte for byte: a side file keeps these, not the decoded text
    # (which has replacement characters where the bytes were not UTF-8).
    raw_output: bytes | None = None
    raw_stderr: bytes | None = None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the whole process group, then SIGKILL what is left after a grace period."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    # Even if the shell exited, its children may linger in the group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_command(
    command: str,
    *,
    cwd: str | None,
    env: Mapping[str, str],
    timeout: float | None,
    should_stop: Callable[[], bool],
    token: str | None = None,
    live: Callable[[str, bytes], None] | None = None,
) -> AttemptResult:
    """Run ``command`` with ``/bin/sh -c`` and wait for it, a timeout or a stop request.

    ``live``, if given, is called from reader threads with ``(stream, bytes)`` as the
    command writes them (``wfstate.follow`` keeps them in a live file that
    ``GET runs/{id}/steps/{state}/output/?follow=1`` streams).

    ``token`` goes into the command's environment as ``WFSTATE_STEP_TOKEN`` (a fresh
    one if not given): the executor records it in the running step's result, so that
    the step's processes can be found and killed if the executor dies (see
    :mod:`wfstate.engine.processes`).
    """
    # Every process of this execution inherits the token: how an orphan is told apart
    # from a stranger that got a reused process (group) id.
    full_env = {**os.environ, **env, TOKEN_VARIABLE: token or new_token()}
    # The kernel kills the shell if the executor dies (Linux); see processes.py.
    argv, preexec = with_pdeathsig(["/bin/sh", "-c", command])
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd or None,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: we can kill all of it
            preexec_fn=preexec,
        )
    except OSError as exc:
        return AttemptResult(ok=False, error=f"could not start the command: {exc}")
    deadline = time.monotonic() + timeout if timeout else None
    cancelled = timed_out = False
    out = err = b""
    if live is not None:
        return _finish(proc, *_collect_live(proc, live, deadline, should_stop), timeout)
    while True:
        wait = POLL_INTERVAL
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        try:
            out, err = proc.communicate(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            pass
        if should_stop():
            cancelled = True
        elif deadline is not None and time.monotonic() >= deadline:
            timed_out = True
        if cancelled or timed_out:
            _kill_group(proc)
            out, err = proc.communicate()
            break
    return _finish(proc, out, err, cancelled, timed_out, timeout)


def _collect_live(
    proc: subprocess.Popen[bytes],
    live: Callable[[str, bytes], None],
    deadline: float | None,
    should_stop: Callable[[], bool],
) -> tuple[bytes, bytes, bool, bool]:
    """Like the ``communicate()`` loop, but each chunk is also handed to ``live`` as it
    arrives (one reader thread per pipe, as ``communicate()`` itself does)."""
    chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}

    def read(stream: str, pipe: Any) -> None:
        fd = pipe.fileno()
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            chunks[stream].append(data)
            try:
                live(stream, data)
            except Exception:  # the live copy is a convenience: never fail the step for it
                logger.exception("could not write the live output of a step")

    readers = [
        threading.Thread(target=read, args=(name, pipe), daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    cancelled = timed_out = False
    while True:
        wait = POLL_INTERVAL
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        alive = [reader for reader in readers if reader.is_alive()]
        if alive:
            alive[0].join(wait)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        if not any(reader.is_alive() for reader in readers) and proc.poll() is not None:
            break
        if should_stop():
            cancelled = True
        elif deadline is not None and time.monotonic() >= deadline:
            timed_out = True
        if cancelled or timed_out:
            _kill_group(proc)
            break
    for reader in readers:
        reader.join()
    proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()
    return b"".join(chunks["stdout"]), b"".join(chunks["stderr"]), cancelled, timed_out


def _finish(
    proc: subprocess.Popen[bytes],
    out: bytes,
    err: bytes,
    cancelled: bool,
    timed_out: bool,
    timeout: float | None,
) -> AttemptResult:
    """The attempt's result once the command has ended (or was killed)."""
    # Whatever the shell did, leave no member of its group behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    stdout = out.decode("utf-8", errors="replace")
    stderr = err.decode("utf-8", errors="replace")
    code = proc.returncode
    if cancelled:
        return AttemptResult(
            False, stdout, stderr, code, "cancelled", cancelled=True, raw_output=out, raw_stderr=err
        )
    if timed_out:
        return AttemptResult(
            False,
            stdout,
            stderr,
            code,
            f"timed out after {timeout:g}s",
            timed_out=True,
            raw_output=out,
            raw_stderr=err,
        )
    if code != 0:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        message = f"exit code {code}" + (f": {detail}" if detail else "")
        if code < 0:
            message = f"killed by signal {-code}"
        return AttemptResult(False, stdout, stderr, code, message, raw_output=out, raw_stderr=err)
    return AttemptResult(True, stdout, stderr, 0, raw_output=out, raw_stderr=err)


class StepContext:
    """What a ``call`` step receives as ``ctx``."""

    def __init__(
        self,
        *,
        workflow_id: str,
        workflow_name: str,
        state_name: str,
        inputs: Mapping[str, Any],
        states: Mapping[str, Any],
        attempt: int,
        should_stop: Callable[[], bool],
    ) -> None:
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name
        self.state_name = state_name
        self.inputs = inputs
        self.states = states
        self.attempt = attempt
        self.logger = logging.getLogger(f"wfstate.steps.{workflow_name}.{state_name}")
        self._should_stop = should_stop
        # Set when the executor stopped waiting for this call (its timeout): the thread
        # cannot be killed, but it can be told to give up.
        self.abandoned = threading.Event()

    def check_cancelled(self) -> None:
        """Raise ``StepCancelled`` if the run was asked to stop or the step timed out
        (call this in long loops).

        Raises:
            StepCancelled: stop now; the step's result is already recorded.
        """
        if self.cancelled:
            raise StepCancelled("cancelled")

    @property
    def cancelled(self) -> bool:
        """True once the run is being cancelled, or the step timed out."""
        return self.abandoned.is_set() or self._should_stop()


def run_call(
    target: str,
    kwargs: dict[str, Any],
    ctx: StepContext,
    *,
    timeout: float | None,
    should_stop: Callable[[], bool],
) -> AttemptResult:
    """Call a Python callable ``target(ctx, **kwargs)``.

    Without a timeout the call runs inline (no thread to start: a no-op step costs
    microseconds); cancellation is then cooperative through ``ctx.check_cancelled()``.
    With a timeout it runs in a daemon thread we stop waiting for when time is up.
    Python cannot kill a thread: a call that times out (or is cancelled without calling
    ``ctx.check_cancelled()``) runs on in the background until it returns, or until the
    process exits. The step is recorded failed (or cancelled) at once, the run goes on,
    and whatever the call later returns or raises is discarded. ``ctx.cancelled`` turns
    true when it timed out, so a call that polls it (or ``ctx.check_cancelled()``) stops
    soon after; one that must be stopped for sure belongs in a ``command`` step, whose
    processes are killed.
    """
    try:
        func = import_string(target)
    except ImportError as exc:
        return AttemptResult(ok=False, error=f"cannot import {target!r}: {exc}")

    def invoke() -> AttemptResult:
        try:
            return AttemptResult(ok=True, output=func(ctx, **kwargs))
        except StepCancelled:
            return AttemptResult(ok=False, error="cancelled", cancelled=True)
        except Exception as exc:  # a step's failure is data, not a crash
            return AttemptResult(
                ok=False,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )

    if not timeout:
        return invoke()
    box: list[AttemptResult] = []
    thread = threading.Thread(target=lambda: box.append(invoke()), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while True:
        thread.join(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
        if box:
            return box[0]
        if should_stop():
            return AttemptResult(ok=False, error="cancelled", cancelled=True)
        if time.monotonic() >= deadline:
            ctx.abandoned.set()
            logger.warning(
                "call %s of step %s timed out after %gs; its thread cannot be killed and "
                "runs on in the background, its result will be discarded",
                target,
                ctx.state_name,
                timeout,
            )
            return AttemptResult(ok=False, error=f"timed out after {timeout:g}s", timed_out=True)
