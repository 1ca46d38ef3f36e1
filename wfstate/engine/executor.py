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
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from wfstate import follow
from wfstate.definitions.model import StateDef, WorkflowDefinition
from wfstate.definitions.templates import (
    ContextCache,
    build_context,
    evaluate,
    render_command,
    render_text,
    render_value,
)
from wfstate.engine import calls as sub_calls
from wfstate.engine import hooks as step_hooks
from wfstate.engine import parallel
from wfstate.engine._values import (
    _clean,
    _elapsed_ms,
    _is_storage_error,
    _masked,
    _nul_problem,
    _output_size,
    _retry_delay,
    _secret_values,
)
from wfstate.engine.events import CHECKPOINT_TIMING, Progress, ProgressEvent
from wfstate.engine.loops import LOOP_TYPES, IterationScope, LoopsView, run_loop, scope_context
from wfstate.engine.operations import operation_target
from wfstate.engine.processes import new_token, step_record
from wfstate.engine.steps import AttemptResult, StepContext, run_call, run_command
from wfstate.engine.waits import WAIT_TYPES, run_wait
from wfstate.exceptions import StateTooLarge, WFStateError
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState, utcnow
from wfstate.stores.base import StateStore

logger = logging.getLogger("wfstate.engine")

Listener = Callable[[WorkflowState], None]


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
        resolve: Callable[[str], WorkflowDefinition] | None = None,
        parent_stop: Callable[[], bool] | None = None,
        call_chain: tuple[str, ...] = (),
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
        self._context_cache = ContextCache()
        # Set once the run's outcome is durable: nothing may overwrite it after that.
        self._ended = False
        # Loops' finished iterations by side file, read once (see engine/loops.py).
        self._loop_records: dict[str, list[dict[str, Any]]] = {}
        # Sub-workflows (engine/calls.py): how a child's definition is found, the
        # parent's stop (a child stops with its parent), the workflows above this run.
        self.resolve = resolve
        self.parent_stop = parent_stop
        self.call_chain = call_chain

    # --- checkpoints ---------------------------------------------------------------------

    def _checkpoint(self, *, durable: bool = True) -> None:
        state = self._state
        assert state is not None
        with self._lock:
            started = time.perf_counter()
            self.store.save(state, durable=durable)
            CHECKPOINT_TIMING.seconds = time.perf_counter() - started
            for listener in self.listeners:
                try:
                    listener(state)
                except Exception:
                    logger.exception("checkpoint listener failed for run %s", state.workflow_id)

    def _emit(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            try:
                self.progress(event)
            except Exception:
                logger.exception("progress callback failed")

    def should_stop(self) -> bool:
        """True when the run was asked to stop (signal, or a cancel request file)."""
        if self.cancel_event.is_set():
            return True
        if self.parent_stop is not None and self.parent_stop():
            self.cancel_event.set()
            return True
        state = self._state
        if state is None:
            return False
        try:
            requested = self.store.cancel_requested(state.workflow_id)
        except Exception:
            # Polled every 100 ms from inside a step's wait loop: an unreadable marker
            # must not escape from there (the step's process would be left behind).
            logger.exception("could not check the cancel request of run %s", state.workflow_id)
            return False
        if requested:
            self.cancel_event.set()
            return True
        return False

    # --- the run -------------------------------------------------------------------------

    def execute(self, state: WorkflowState) -> WorkflowState:
        """Run ``state`` from its ``current_state`` (or the initial state) to the end.

        Every failure inside the run ends it ``failed`` with the error in the state: a
        template or routing error, a state the definition no longer has, a bug in a
        step's plumbing, even a checkpoint that could not be written (if the failure
        itself can still be written).

        Raises:
            StorageError, StateLocked: a checkpoint could not be written, and neither
                could the failure; the run is left as its last durable checkpoint says,
                ready to be resumed.
        """
        self._state = state
        self._ended = False
        definition = self.definition
        state.status = RunStatus.RUNNING
        state.error = None
        state.completed_at = None
        current = state.current_state or definition.initial
        # The first state an execution runs may be a parallel block that a resume left
        # half done: its completed branches are kept (see prepare_resume).
        first = True
        try:
            failed = step_hooks.workflow_hook(self, "workflow_start", fail_fast=True)
            if failed is not None:
                self._finish(RunStatus.FAILED, failed, hooks=False)
                return state
            while True:
                sdef = definition.states.get(current)
                if sdef is None:
                    self._fail_run(
                        current,
                        f"workflow '{definition.name}' has no state '{current}' (the "
                        "definition changed since the run began); resume it with --from STATE",
                    )
                    return state
                if sdef.type == "terminal":
                    self._finish_terminal(sdef)
                    return state
                if self.should_stop():
                    self._finish_cancelled(current)
                    return state
                exit_to: str | None = None
                if sdef.type == "parallel":
                    result = self._run_parallel(sdef, reuse=first)
                elif sdef.type in LOOP_TYPES:
                    # Only the state a run resumes at goes on from recorded loop progress.
                    result, exit_to = run_loop(self, sdef, resume=first)
                elif sdef.type in WAIT_TYPES:
                    parked = run_wait(self, sdef)
                    if parked is None:
                        return state  # waiting: the caller releases the run lock
                    result = parked
                else:
                    result = self._run_step(sdef)
                first = False
                if result.status == StepStatus.CANCELLED:
                    self._finish_cancelled(current)
                    return state
                nxt = exit_to or self._route(sdef, result)
                if nxt is None and self._inline_failure(sdef, result):
                    return state
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
        except StateTooLarge as exc:
            return self._fail_too_large(exc)
        except Exception as exc:
            return self._fail_on_exception(current, exc)

    def _fail_on_exception(self, current: str, exc: Exception) -> WorkflowState:
        """Record an exception that escaped the run as the run's failure, if still possible.

        Raises:
            the original exception: the outcome was already durable, or the failure
            could not be written either (then the file keeps its last checkpoint).
        """
        state = self._state
        assert state is not None
        if self._ended:
            raise exc
        tb = None
        if _is_storage_error(exc):
            logger.error("run %s: a checkpoint failed at '%s': %s", state.workflow_id, current, exc)
            message = f"state '{current}': could not write a checkpoint: {exc}"
        elif isinstance(exc, WFStateError):
            # A template or routing error is the run's failure, recorded like any other.
            message = f"state '{current}': {exc}"
        else:
            logger.exception("run %s: unexpected error at state '%s'", state.workflow_id, current)
            message = f"state '{current}': internal error: {type(exc).__name__}: {exc}"
            tb = traceback.format_exc()
        try:
            self._fail_run(current, message, tb)
        except Exception:
            logger.exception("run %s: could not record its failure either", state.workflow_id)
            raise exc from None
        return state

    def _fail_run(self, current: str, message: str, tb: str | None = None) -> None:
        """End the run ``failed`` at ``current``; a step still in flight fails with it."""
        state = self._state
        assert state is not None
        message = _clean(message)
        with self._lock:
            state.current_state = current
            now = utcnow()
            for entry in state.states.values():
                if entry.status == StepStatus.RUNNING:
                    entry.status = StepStatus.FAILED
                    entry.error = message
                    entry.traceback = _clean(tb) if tb else entry.traceback
                    entry.completed_at = now
                    entry.duration_ms = _elapsed_ms(entry.started_at, now)
        self._finish(RunStatus.FAILED, message)

    def _inline_failure(self, sdef: StateDef, result: StepResult) -> bool:
        """awf's ``on_failure: {message, status}``: end the run failed with them."""
        if result.status == StepStatus.COMPLETED or sdef.continue_on_error:
            return False
        if sdef.failure_message is None and sdef.failure_status is None:
            return False
        message = f"state '{sdef.name}' failed ({result.error})"
        if sdef.failure_message:
            try:
                message = render_text(sdef.failure_message, self._context())
            except WFStateError as exc:
                message = f"{sdef.failure_message} (message could not be rendered: {exc})"
        assert self._state is not None
        self._state.exit_code = sdef.failure_status
        self._finish(RunStatus.FAILED, message)
        return True

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
            context = build_context(self._state_snapshot(), self._context_cache)
        context["loops"] = LoopsView(self, None)
        return context

    # --- steps ---------------------------------------------------------------------------

    def _begin(
        self,
        name: str,
        attempt: int,
        *,
        set_current: bool,
        durable: bool = True,
        process: dict[str, Any] | None = None,
        started_at: str | None = None,
        key: str | None = None,
    ) -> StepResult:
        state = self._state
        assert state is not None
        with self._lock:
            entry = StepResult(
                name=name,
                status=StepStatus.RUNNING,
                attempt=attempt,
                started_at=started_at or utcnow(),
                process=process,
            )
            state.states[key or name] = entry
            if set_current:
                state.current_state = name
            self._checkpoint(durable=durable)
        self._emit({"event": "step_started", "state": name, "attempt": attempt})
        return entry

    def _run_step(
        self,
        sdef: StateDef,
        *,
        set_current: bool = True,
        stop: Callable[[], bool] | None = None,
        scope: IterationScope | None = None,
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
        token = new_token() if sdef.command is not None else None
        process = step_record(token) if token is not None else None
        key = scope.key(sdef.name) if scope else None
        entry = self._begin(sdef.name, attempt, set_current=set_current, process=process, key=key)
        step_hooks.step_hook(self, sdef, entry, "pre", should_stop)
        first_started = entry.started_at
        while True:
            # Whatever the step printed, returned or raised, with secret inputs masked.
            outcome = _masked(
                self._attempt(sdef, attempt, should_stop, token, scope), state, self.definition
            )
            if outcome.ok or outcome.cancelled or attempt >= max_attempts:
                break
            if policy is not None and not policy.is_retryable(outcome.exit_code):
                break
            delay = _retry_delay(policy, attempt, self.rng) if policy else 0.0
            if delay is None:
                assert policy is not None
                outcome.error = _clean(
                    f"{outcome.error}; not retried: the retry delay after attempt {attempt} "
                    f"overflows (backoff {policy.backoff}, multiplier {policy.multiplier:g}, "
                    "no max_delay)"
                )
                break
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
        spill = scope.spill(sdef.name) if scope else None
        result = self._end(sdef, entry, outcome, attempt, first_started, spill)
        step_hooks.step_hook(self, sdef, result, "post", should_stop)
        return result

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
        scope: IterationScope | None = None,
    ) -> AttemptResult:
        state = self._state
        assert state is not None
        try:
            if sdef.type == "call_workflow":
                entry = state.states[scope.key(sdef.name) if scope else sdef.name]
                return sub_calls.run_call_workflow(self, sdef, entry, should_stop)
            context = self._context() if scope is None else scope_context(self, scope)
            if sdef.command is not None:
                command = render_command(sdef.command, context)
                cwd = render_text(sdef.dir, context) if sdef.dir else None
                env = {k: str(render_value(v, context)) for k, v in sdef.env.items()}
                problem = _nul_problem(command, cwd, env)
                if problem is not None:
                    return AttemptResult(ok=False, error=problem)
                # What it prints is also kept live for GET .../output/?follow=1 (follow.py).
                live = follow.live_output(
                    self.store,
                    state.workflow_id,
                    scope.key(sdef.name) if scope else sdef.name,
                    _secret_values(state, self.definition),
                )
                try:
                    return run_command(
                        command,
                        cwd=cwd,
                        env=env,
                        timeout=sdef.timeout,
                        should_stop=should_stop,
                        token=token,
                        live=live,
                    )
                finally:
                    if live is not None:
                        live.close()
            kwargs = render_value(dict(sdef.with_), context)
            ctx = StepContext(
                workflow_id=state.workflow_id,
                workflow_name=state.workflow_name,
                state_name=sdef.name,
                inputs=context["inputs"],  # secret inputs opened (wfstate.secrets)
                states=context["states"],
                attempt=attempt,
                should_stop=should_stop,
            )
            target = operation_target(sdef.operation) if sdef.operation else str(sdef.call)
            return run_call(target, kwargs, ctx, timeout=sdef.timeout, should_stop=should_stop)
        except WFStateError as exc:
            # A template that does not render fails the step (retrying will not help).
            return AttemptResult(ok=False, error=str(exc))
        except SystemExit as exc:
            # sys.exit() in a call step would end the whole executor, run left running.
            return AttemptResult(
                ok=False,
                error=f"{sdef.call} called sys.exit({exc.code!r})",
                traceback=traceback.format_exc(),
            )
        except Exception as exc:
            # Whatever else goes wrong starting the step is the step's failure, not a
            # crash of the executor (which would leave the run ``running``).
            logger.exception("run %s: state '%s' could not run", state.workflow_id, sdef.name)
            return AttemptResult(
                ok=False,
                error=f"state '{sdef.name}' could not run: {type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(),
            )

    def _end(
        self,
        sdef: StateDef,
        entry: StepResult,
        outcome: AttemptResult,
        attempt: int,
        started_at: str | None,
        spill: str | None = None,
    ) -> StepResult:
        state = self._state
        assert state is not None
        output = outcome.output
        if outcome.cancelled:
            status = StepStatus.CANCELLED
        elif outcome.ok:
            status = StepStatus.COMPLETED
        else:
            status = StepStatus.FAILED
        try:
            # Before anything encodes it: a lone surrogate or a non-JSON value would
            # otherwise break the checkpoint, not just this step.
            orjson.dumps(output)
        except TypeError as exc:
            what = sdef.call or sdef.name
            status, output = StepStatus.FAILED, None
            outcome.ok = False
            outcome.error = f"the output of {what} is not JSON-serialisable: {exc}"
        # Spilled outputs keep the bytes the process wrote, not a re-encoded text.
        name = spill or sdef.name  # a loop's body step keeps each iteration's output
        output, truncated = self._inline(
            state.workflow_id, name, "stdout", output, outcome.raw_output
        )
        stderr, err_truncated = self._inline(
            state.workflow_id, name, "stderr", _clean(outcome.stderr), outcome.raw_stderr
        )
        completed = utcnow()
        with self._lock:
            entry.status = status
            entry.output = output
            entry.stderr = stderr
            entry.exit_code = outcome.exit_code
            entry.attempt = attempt
            entry.error = (
                None if outcome.ok and status == StepStatus.COMPLETED else _clean(outcome.error)
            )
            entry.traceback = _clean(outcome.traceback)
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

    def _inline(
        self, workflow_id: str, name: str, stream: str, value: Any, raw: bytes | None = None
    ) -> tuple[Any, bool]:
        """Cut a big text output to ``max_inline_output`` bytes, keeping it whole beside:
        the ``raw`` bytes the process wrote when there are any, not the decoded text."""
        if not isinstance(value, str):
            return value, False
        data = value.encode("utf-8")
        if len(data) <= self.max_inline_output:
            return value, False
        self.store.save_output(workflow_id, name, stream, data if raw is None else raw)
        return data[: self.max_inline_output].decode("utf-8", errors="ignore"), True

    # --- parallel (engine/parallel.py) ---------------------------------------------------

    def _run_parallel(self, sdef: StateDef, *, reuse: bool = False) -> StepResult:
        return parallel.run_parallel(self, sdef, reuse=reuse)

    def _run_branch(self, branch: StateDef, stop: Callable[[], bool]) -> StepResult:
        return parallel.run_branch(self, branch, stop)

    def _state_id(self) -> str:
        return self._state.workflow_id if self._state is not None else "?"

    # --- endings ---------------------------------------------------------------------------

    def _finish_terminal(self, sdef: StateDef) -> None:
        state = self._state
        assert state is not None
        message = None
        if sdef.message:
            try:
                message = render_text(sdef.message, self._context())
            except Exception as exc:
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

    def _fail_too_large(self, exc: StateTooLarge) -> WorkflowState:
        """A checkpoint the store refused as too large (nothing was written): the
        biggest outputs move to side files, biggest first, until the run can be saved as
        failed, saying why; so its file stays one the store reads.

        Raises:
            StateTooLarge: still too large without any output (huge inputs).
        """
        state = self._state
        assert state is not None
        error = f"the state grew too large to be saved ({exc})"
        with self._lock:
            for entry in state.states.values():
                if entry.status == StepStatus.RUNNING:  # never ran: the run stops here
                    entry.status, entry.error = StepStatus.FAILED, "not run: " + error
        for entry in sorted(state.states.values(), key=_output_size, reverse=True):
            if _output_size(entry):
                with self._lock:
                    if not entry.output_truncated:  # the side files have it already
                        self._spill(state.workflow_id, entry)
                    entry.output = entry.stderr = None
                    entry.output_truncated = True
                    entry.status = StepStatus.FAILED
                    entry.error = f"its output was moved to side files: {error}"
            try:
                # No hooks: their records would only make the state larger.
                self._finish(RunStatus.FAILED, f"state '{entry.name}': {error}", hooks=False)
                return state
            except StateTooLarge:
                continue
        raise exc

    def _spill(self, workflow_id: str, entry: StepResult) -> None:
        for stream, value in (("stdout", entry.output), ("stderr", entry.stderr)):
            if value is not None:
                data = value.encode() if isinstance(value, str) else orjson.dumps(value)
                self.store.save_output(workflow_id, entry.name, stream, data)

    def _finish(self, status: RunStatus, error: str | None, *, hooks: bool = True) -> None:
        state = self._state
        assert state is not None
        if status == RunStatus.COMPLETED and self.definition.outputs:
            try:
                outputs = sub_calls.collect_outputs(self.definition, self._context())
            except WFStateError as exc:
                status, error = RunStatus.FAILED, f"workflow outputs: {exc}"
            else:
                with self._lock:
                    state.outputs = outputs
        if hooks:
            # Before the final checkpoint: a crash in between re-enters here on recovery,
            # and the hooks' records (checkpointed one by one) keep them to once.
            event = {
                RunStatus.COMPLETED: "workflow_end",
                RunStatus.CANCELLED: "workflow_cancel",
            }.get(status, "workflow_error")
            step_hooks.workflow_hook(self, event, error=error)
        with self._lock:
            state.status = status
            state.error = _clean(error)
            state.completed_at = utcnow()
            self._checkpoint()
            self._ended = True
        self._emit({"event": "run_finished", "status": str(status), "error": error})
