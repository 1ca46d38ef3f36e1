"""The executor: walks a run through its definition, checkpointing to the store.

Checkpoints (docs/workflows.md, "Runs, resume and cancel"), and which of them are fsynced
(see docs/storage.md):

* run start, and each step start: durable. A step start is written together with the
  result of the step before it (one write per step boundary), so a step's result is
  durable before the next step begins, and the file always names the step in flight;
* a retry attempt's start: atomic but not fsynced (it only moves the attempt counter;
  losing it in a power cut re-runs an attempt, which at-least-once allows);
* each parallel branch's start and end: durable;
* completion, failure and cancellation: durable.

The caller holds the run lock for the whole execution (``wfstate.runs`` does).
This module knows nothing of Django settings, HTTP or argparse.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import orjson

from wfstate.definitions.model import StateDef, WorkflowDefinition
from wfstate.definitions.templates import (
    ContextCache,
    build_context,
    evaluate,
    render_command,
    render_text,
    render_value,
)
from wfstate.engine.processes import new_token, step_record
from wfstate.engine.steps import AttemptResult, StepContext, run_call, run_command
from wfstate.engine.waits import WAIT_TYPES, run_wait
from wfstate.exceptions import StateLocked, StorageError, WFStateError
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, parse_time, utcnow
from wfstate.stores.base import StateStore

logger = logging.getLogger("wfstate.engine")

Listener = Callable[[WorkflowState], None]
Progress = Callable[[dict[str, Any]], None]


def _elapsed_ms(started_at: str | None, completed_at: str) -> int | None:
    start, end = parse_time(started_at), parse_time(completed_at)
    if start is None or end is None:
        return None
    return int((end - start).total_seconds() * 1000)


class Executor:
    """Execute one run of ``definition``.

    Args:
        store: where checkpoints go.
        definition: the workflow.
        listeners: called with the state after every checkpoint (the index); their
            errors are logged, never raised.
        progress: called with an event dict at each step start and end (commands print).
        max_inline_output: bytes of a step's output kept in the JSON; the rest spills.
        cancel_event: set by a signal handler to stop the run as a cancellation.
    """

    def __init__(
        self,
        store: StateStore,
        definition: WorkflowDefinition,
        *,
        listeners: Iterable[Listener] = (),
        progress: Progress | None = None,
        max_inline_output: int = 65536,
        cancel_event: threading.Event | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.definition = definition
        self.listeners = list(listeners)
        self.progress = progress
        self.max_inline_output = max_inline_output
        self.cancel_event = cancel_event or threading.Event()
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not crypto
        # Parallel branches mutate one state document: one lock serialises the
        # mutation and the save.
        self._lock = threading.RLock()
        self._state: WorkflowState | None = None
        # Template fields of finished steps, reused from step to step (see build_context).
        self._context_cache: ContextCache = {}

    # --- checkpoints ---------------------------------------------------------------------

    def _checkpoint(self, *, durable: bool = True) -> None:
        state = self._state
        assert state is not None
        with self._lock:
            self.store.save(state, durable=durable)
            for listener in self.listeners:
                try:
                    listener(state)
                except Exception:
                    logger.exception("checkpoint listener failed for run %s", state.workflow_id)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.progress is not None:
            try:
                self.progress(event)
            except Exception:
                logger.exception("progress callback failed")

    def should_stop(self) -> bool:
        """True when the run was asked to stop (signal, or a cancel request file)."""
        if self.cancel_event.is_set():
            return True
        state = self._state
        if state is not None and self.store.cancel_requested(state.workflow_id):
            self.cancel_event.set()
            return True
        return False

    # --- the run -------------------------------------------------------------------------

    def execute(self, state: WorkflowState) -> WorkflowState:
        """Run ``state`` from its ``current_state`` (or the initial state) to the end.

        Raises:
            StorageError, StateLocked: a checkpoint could not be written; the run is left
                as its last durable checkpoint says, ready to be resumed.
        """
        self._state = state
        definition = self.definition
        state.status = RunStatus.RUNNING
        state.error = None
        state.completed_at = None
        current = state.current_state or definition.initial
        try:
            while True:
                sdef = definition.states[current]
                if sdef.type == "terminal":
                    self._finish_terminal(sdef)
                    return state
                if self.should_stop():
                    self._finish_cancelled(current)
                    return state
                if sdef.type == "parallel":
                    result = self._run_parallel(sdef)
                elif sdef.type in WAIT_TYPES:
                    parked = run_wait(self, sdef)
                    if parked is None:
                        return state  # waiting: the caller releases the run lock
                    result = parked
                else:
                    result = self._run_step(sdef)
                if result.status == StepStatus.CANCELLED:
                    self._finish_cancelled(current)
                    return state
                nxt = self._route(sdef, result)
                if nxt is None:
                    if result.status == StepStatus.COMPLETED or sdef.continue_on_error:
                        self._finish(RunStatus.COMPLETED, None)
                    else:
                        self._finish(
                            RunStatus.FAILED,
                            f"state '{current}' failed ({result.error}) and has no failure route",
                        )
                    return state
                current = nxt
        except WFStateError as exc:
            # A template or routing error is the run's failure, recorded like any other.
            if state.status == RunStatus.RUNNING and not _is_storage_error(exc):
                state.current_state = current
                self._finish(RunStatus.FAILED, f"state '{current}': {exc}")
                return state
            raise

    def _route(self, sdef: StateDef, result: StepResult) -> str | None:
        if sdef.type in WAIT_TYPES:
            from wfstate.engine import waits

            return waits.route(self, sdef, result)
        ok = result.status == StepStatus.COMPLETED or sdef.continue_on_error
        if sdef.transitions:
            context = self._context()
            for transition in sdef.transitions:
                if transition.when is None or evaluate(transition.when, context):
                    return transition.goto
        return sdef.on_success if ok else sdef.on_failure

    def _state_snapshot(self) -> WorkflowState:
        assert self._state is not None
        return self._state

    def _context(self) -> dict[str, Any]:
        """The template context now; under the lock, so no branch is half-way through
        recording its result (which a cached entry would otherwise keep)."""
        with self._lock:
            return build_context(self._state_snapshot(), self._context_cache)

    # --- steps ---------------------------------------------------------------------------

    def _begin(
        self,
        name: str,
        attempt: int,
        *,
        set_current: bool,
        durable: bool = True,
        process: dict[str, Any] | None = None,
    ) -> StepResult:
        state = self._state
        assert state is not None
        with self._lock:
            entry = StepResult(
                name=name,
                status=StepStatus.RUNNING,
                attempt=attempt,
                started_at=utcnow(),
                process=process,
            )
            state.states[name] = entry
            if set_current:
                state.current_state = name
            self._checkpoint(durable=durable)
        self._emit({"event": "step_started", "state": name, "attempt": attempt})
        return entry

    def _run_step(
        self, sdef: StateDef, *, set_current: bool = True, stop: Callable[[], bool] | None = None
    ) -> StepResult:
        state = self._state
        assert state is not None
        should_stop = stop or self.should_stop
        policy = sdef.retry
        max_attempts = policy.max_attempts if policy else 1
        attempt = 1
        # A step re-run after a crash or a resume starts again at attempt 1.
        # A command's processes carry a token, recorded at its start: how its orphans
        # are found if this executor dies (see processes.py).
        token = new_token()
        process = step_record(token) if sdef.command is not None else None
        entry = self._begin(sdef.name, attempt, set_current=set_current, process=process)
        first_started = entry.started_at
        while True:
            outcome = self._attempt(sdef, attempt, should_stop, token)
            if outcome.ok or outcome.cancelled or attempt >= max_attempts:
                break
            if policy is not None and not policy.is_retryable(outcome.exit_code):
                break
            delay = policy.delay(attempt, self.rng) if policy else 0.0
            self._emit(
                {
                    "event": "step_retry",
                    "state": sdef.name,
                    "attempt": attempt,
                    "error": outcome.error,
                    "delay": delay,
                }
            )
            if self._sleep(delay, should_stop):
                outcome = AttemptResult(ok=False, error="cancelled", cancelled=True)
                break
            attempt += 1
            with self._lock:
                entry.attempt = attempt
                entry.error = outcome.error
                self._checkpoint(durable=False)
        return self._end(sdef, entry, outcome, attempt, first_started)

    def _sleep(self, seconds: float, should_stop: Callable[[], bool]) -> bool:
        """Wait ``seconds``; True if stopped meanwhile."""
        deadline = time.monotonic() + seconds
        while True:
            if should_stop():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.cancel_event.wait(min(0.1, remaining))

    def _attempt(
        self,
        sdef: StateDef,
        attempt: int,
        should_stop: Callable[[], bool],
        token: str | None = None,
    ) -> AttemptResult:
        state = self._state
        assert state is not None
        try:
            context = self._context()
            if sdef.command is not None:
                command = render_command(sdef.command, context)
                cwd = render_text(sdef.dir, context) if sdef.dir else None
                env = {k: str(render_value(v, context)) for k, v in sdef.env.items()}
                return run_command(
                    command,
                    cwd=cwd,
                    env=env,
                    timeout=sdef.timeout,
                    should_stop=should_stop,
                    token=token,
                )
            kwargs = render_value(dict(sdef.with_), context)
            ctx = StepContext(
                workflow_id=state.workflow_id,
                workflow_name=state.workflow_name,
                state_name=sdef.name,
                inputs=state.inputs,
                states=context["states"],
                attempt=attempt,
                should_stop=should_stop,
            )
            return run_call(
                str(sdef.call), kwargs, ctx, timeout=sdef.timeout, should_stop=should_stop
            )
        except WFStateError as exc:
            # A template that does not render fails the step (retrying will not help).
            return AttemptResult(ok=False, error=str(exc))

    def _end(
        self,
        sdef: StateDef,
        entry: StepResult,
        outcome: AttemptResult,
        attempt: int,
        started_at: str | None,
    ) -> StepResult:
        state = self._state
        assert state is not None
        output, truncated = self._inline(state.workflow_id, sdef.name, "stdout", outcome.output)
        stderr, err_truncated = self._inline(state.workflow_id, sdef.name, "stderr", outcome.stderr)
        if outcome.cancelled:
            status = StepStatus.CANCELLED
        elif outcome.ok:
            status = StepStatus.COMPLETED
        else:
            status = StepStatus.FAILED
        if outcome.ok:
            try:
                orjson.dumps(output)
            except TypeError as exc:
                status, output = StepStatus.FAILED, None
                outcome.error = f"the output of {sdef.call} is not JSON-serialisable: {exc}"
        completed = utcnow()
        with self._lock:
            entry.status = status
            entry.output = output
            entry.stderr = stderr
            entry.exit_code = outcome.exit_code
            entry.attempt = attempt
            entry.error = None if outcome.ok and status == StepStatus.COMPLETED else outcome.error
            entry.traceback = outcome.traceback
            entry.started_at = started_at
            entry.completed_at = completed
            entry.duration_ms = _elapsed_ms(started_at, completed)
            entry.output_truncated = truncated or err_truncated
            entry.process = None  # its processes are gone: run_command killed the group
        self._emit(
            {
                "event": "step_finished",
                "state": sdef.name,
                "status": str(status),
                "attempt": attempt,
                "duration_ms": entry.duration_ms,
                "error": entry.error,
            }
        )
        return entry

    def _inline(self, workflow_id: str, name: str, stream: str, value: Any) -> tuple[Any, bool]:
        """Cut a big text output to ``max_inline_output`` bytes, keeping it whole beside."""
        if not isinstance(value, str):
            return value, False
        data = value.encode("utf-8")
        if len(data) <= self.max_inline_output:
            return value, False
        self.store.save_output(workflow_id, name, stream, data)
        return data[: self.max_inline_output].decode("utf-8", errors="ignore"), True

    # --- parallel ------------------------------------------------------------------------

    def _run_parallel(self, sdef: StateDef) -> StepResult:
        state = self._state
        assert state is not None
        entry = self._begin(sdef.name, 1, set_current=True)
        started_at = entry.started_at
        branches = [self.definition.states[name] for name in sdef.parallel]
        # A failed branch under all_succeed stops its siblings.
        abort = threading.Event()

        def branch_stop() -> bool:
            return abort.is_set() or self.should_stop()

        results: dict[str, StepResult] = {}
        workers = max(1, min(sdef.max_concurrent or len(branches), len(branches)))
        with ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"wfstate-{sdef.name}"
        ) as pool:
            futures: dict[Future[StepResult], str] = {}
            pending = list(branches)
            while pending or futures:
                while pending and len(futures) < workers:
                    branch = pending.pop(0)
                    if branch_stop():
                        with self._lock:
                            state.states[branch.name] = StepResult(
                                name=branch.name, status=StepStatus.SKIPPED
                            )
                        results[branch.name] = state.states[branch.name]
                        continue
                    futures[pool.submit(self._run_branch, branch, branch_stop)] = branch.name
                if not futures:
                    break
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for future in done:
                    name = futures.pop(future)
                    result = future.result()
                    results[name] = result
                    self._checkpoint()  # each branch's end is durable (takes the lock)
                    branch_ok = _branch_ok(self.definition.states[name], result)
                    if not branch_ok and sdef.strategy == "all_succeed":
                        abort.set()
        statuses = {b.name: str(results[b.name].status) for b in branches}
        failed = [b.name for b in branches if not _branch_ok(b, results[b.name])]
        if self.should_stop():
            outcome = AttemptResult(ok=False, output=statuses, error="cancelled", cancelled=True)
        elif sdef.strategy == "best_effort":
            outcome = AttemptResult(ok=True, output=statuses)
        elif sdef.strategy == "any_succeed" and len(failed) == len(branches):
            outcome = AttemptResult(ok=False, output=statuses, error="no branch succeeded")
        elif sdef.strategy == "all_succeed" and failed:
            outcome = AttemptResult(
                ok=False, output=statuses, error=f"branches failed: {', '.join(failed)}"
            )
        else:
            outcome = AttemptResult(ok=True, output=statuses)
        return self._end(sdef, entry, outcome, 1, started_at)

    def _run_branch(self, branch: StateDef, stop: Callable[[], bool]) -> StepResult:
        return self._run_step(branch, set_current=False, stop=stop)

    # --- endings ---------------------------------------------------------------------------

    def _finish_terminal(self, sdef: StateDef) -> None:
        state = self._state
        assert state is not None
        message = None
        if sdef.message:
            try:
                message = render_text(sdef.message, self._context())
            except WFStateError as exc:
                message = f"{sdef.message} (message could not be rendered: {exc})"
        now = utcnow()
        with self._lock:
            state.current_state = sdef.name
            state.states[sdef.name] = StepResult(
                name=sdef.name,
                status=StepStatus.COMPLETED,
                output=message,
                started_at=now,
                completed_at=now,
                duration_ms=0,
            )
        if sdef.status == "success":
            self._finish(RunStatus.COMPLETED, None)
        else:
            self._finish(RunStatus.FAILED, message or f"reached failure state '{sdef.name}'")

    def _finish_cancelled(self, current: str) -> None:
        state = self._state
        assert state is not None
        with self._lock:
            state.current_state = current
            for entry in state.states.values():
                if entry.status == StepStatus.RUNNING:
                    entry.status = StepStatus.CANCELLED
                    entry.completed_at = utcnow()
                    entry.duration_ms = _elapsed_ms(entry.started_at, entry.completed_at)
                    entry.error = entry.error or "cancelled"
        self._finish(RunStatus.CANCELLED, "cancelled")

    def _finish(self, status: RunStatus, error: str | None) -> None:
        state = self._state
        assert state is not None
        with self._lock:
            state.status = status
            state.error = error
            state.completed_at = utcnow()
            self._checkpoint()
        self._emit({"event": "run_finished", "status": str(status), "error": error})


def _branch_ok(branch: StateDef, result: StepResult) -> bool:
    """A branch counts as succeeded if it completed, or failed with continue_on_error."""
    return result.status == StepStatus.COMPLETED or (
        result.status == StepStatus.FAILED and branch.continue_on_error
    )


def _is_storage_error(exc: WFStateError) -> bool:
    return isinstance(exc, StorageError | StateLocked)
