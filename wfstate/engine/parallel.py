"""Parallel blocks: branches run in threads, each branch's start and end checkpointed,
the block's strategy deciding its outcome. A resume keeps the branches that completed.

Functions of the executor (``Executor._run_parallel`` calls :func:`run_parallel`), as
the other step kinds (loops, calls, hooks) are.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from wfstate.definitions.model import StateDef
from wfstate.engine._values import _clean, _elapsed_ms, _is_storage_error
from wfstate.engine.steps import AttemptResult
from wfstate.state import StepResult, StepStatus, WorkflowState, utcnow

if TYPE_CHECKING:
    from wfstate.engine.executor import Executor

logger = logging.getLogger("wfstate.engine")


def kept_branches(executor: Executor, sdef: StateDef) -> dict[str, StepResult]:
    """The completed branches a resume of this block kept (``kept`` in its history
    event, written by :func:`~wfstate.engine.resume.prepare_resume`)."""
    state = executor._state
    assert state is not None
    if not state.history:
        return {}
    event = state.history[-1]
    if event.get("event") not in ("resume", "recover") or event.get("state") != sdef.name:
        return {}
    kept: dict[str, StepResult] = {}
    for name in event.get("kept") or ():
        entry = state.states.get(name)
        if name in sdef.parallel and entry is not None and entry.status == StepStatus.COMPLETED:
            kept[name] = entry
    return kept


def run_parallel(executor: Executor, sdef: StateDef, *, reuse: bool = False) -> StepResult:
    state = executor._state
    assert state is not None
    # Branches that completed before a crash (or a failure) are not run again; the
    # strategy still sees their results.
    kept = kept_branches(executor, sdef) if reuse else {}
    # A block that goes on keeps its first start: its kept branches started after
    # it, which is how a second resume (after a second crash) still keeps them.
    since = first_start(state, sdef.name, kept) if kept else None
    entry = executor._begin(sdef.name, 1, set_current=True, started_at=since)
    started_at = entry.started_at
    branches = [executor.definition.states[name] for name in sdef.parallel]
    # A failed branch under all_succeed stops its siblings.
    abort = threading.Event()

    def branch_stop() -> bool:
        return abort.is_set() or executor.should_stop()

    results: dict[str, StepResult] = dict(kept)
    for name in kept:
        executor._emit({"event": "step_kept", "state": name, "attempt": kept[name].attempt})
    to_run = [b for b in branches if b.name not in kept]
    # An exception that escaped a branch (a checkpoint that failed): raised once
    # every branch has stopped, so no thread is left writing the state.
    escaped: list[Exception] = []
    workers = max(1, min(sdef.max_concurrent or len(branches), len(to_run) or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"wfstate-{sdef.name}") as pool:
        futures: dict[Future[StepResult], str] = {}
        pending = list(to_run)
        while pending or futures:
            while pending and len(futures) < workers:
                branch = pending.pop(0)
                if branch_stop():
                    with executor._lock:
                        state.states[branch.name] = StepResult(
                            name=branch.name, status=StepStatus.SKIPPED
                        )
                    results[branch.name] = state.states[branch.name]
                    continue
                futures[pool.submit(run_branch, executor, branch, branch_stop)] = branch.name
            if not futures:
                break
            done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            for future in done:
                name = futures.pop(future)
                try:
                    result = future.result()
                except Exception as exc:
                    escaped.append(exc)
                    abort.set()
                    continue
                results[name] = result
                try:
                    executor._checkpoint()  # each branch's end is durable (takes the lock)
                except Exception as exc:
                    escaped.append(exc)
                    abort.set()
                    continue
                succeeded = branch_ok(executor.definition.states[name], result)
                if not succeeded and sdef.strategy == "all_succeed":
                    abort.set()
    if escaped:
        raise escaped[0]
    statuses = {b.name: str(results[b.name].status) for b in branches}
    failed = [b.name for b in branches if not branch_ok(b, results[b.name])]
    if executor.should_stop():
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
    return executor._end(sdef, entry, outcome, 1, started_at)


def run_branch(executor: Executor, branch: StateDef, stop: Callable[[], bool]) -> StepResult:
    try:
        return executor._run_step(branch, set_current=False, stop=stop)
    except Exception as exc:
        if _is_storage_error(exc):
            raise  # the block's thread decides (see _run_parallel)
        # A bug in one branch's plumbing fails that branch, not the whole executor.
        logger.exception("run %s: branch '%s' broke", executor._state_id(), branch.name)
        return _branch_broke(executor, branch, exc, traceback.format_exc())


def _branch_broke(executor: Executor, branch: StateDef, exc: Exception, tb: str) -> StepResult:
    state = executor._state
    assert state is not None
    now = utcnow()
    with executor._lock:
        entry = state.states.get(branch.name)
        if entry is None or entry.status != StepStatus.RUNNING:
            entry = StepResult(name=branch.name, status=StepStatus.RUNNING, started_at=now)
            state.states[branch.name] = entry
        entry.status = StepStatus.FAILED
        entry.error = _clean(f"internal error: {type(exc).__name__}: {exc}")
        entry.traceback = _clean(tb)
        entry.completed_at = now
        entry.duration_ms = _elapsed_ms(entry.started_at, now)
    return entry


def first_start(state: WorkflowState, block: str, kept: dict[str, StepResult]) -> str | None:
    """When a resumed block first started: its rewound entry's start, or its earliest
    kept branch's."""
    for rewound in state.history[-1].get("rewound") or ():
        if rewound.get("name") == block and rewound.get("started_at"):
            return str(rewound["started_at"])
    starts = [e.started_at for e in kept.values() if e.started_at]
    return min(starts) if starts else None  # utcnow()'s fixed-width ISO times sort as text


def branch_ok(branch: StateDef, result: StepResult) -> bool:
    """A branch counts as succeeded if it completed, or failed with continue_on_error."""
    return result.status == StepStatus.COMPLETED or (
        result.status == StepStatus.FAILED and branch.continue_on_error
    )
