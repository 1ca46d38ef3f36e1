"""Loops: ``for_each`` and ``while`` states (docs/workflows.md, "Loops"; docs/storage.md).

Durability (the point of this module). A loop keeps, in the state document, only a
summary in its own result (``StepResult.loop``): its side file, how many records of that
file the document acknowledges, and the iterations in flight (index, item, the body
step running, the body steps done). Every finished iteration is one framed record
appended to the loop's side file (:mod:`wfstate.stores.records`), fsynced *before* the
checkpoint that counts it, so the side file is never behind the document. A record
beyond what the document counts (a crash between the two) is cut off on resume, and
that iteration runs again: at-least-once, like a step. The document does not grow with
the iterations, so iteration 10,000 costs what iteration 10 does.

The body of an iteration runs with the executor's own step machinery. Iterations of a
sequential loop keep their body results under the steps' own names in ``states`` (as
awf does: ``states.x`` is the latest); parallel iterations (``max_concurrent``) keep
theirs under ``<loop>.<index>.<step>`` until the iteration ends, so that each sees its
own. Templates in the body see ``loop`` (item, index...) and ``loops.<name>.iterations``.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import secrets
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from wfstate.definitions.loops import LOOP_TYPES, MAX_ITERATIONS_CAP
from wfstate.definitions.model import StateDef
from wfstate.definitions.templates import _step_fields, evaluate, render_value
from wfstate.exceptions import CorruptState, StateLocked, StorageError, TemplateError, WFStateError
from wfstate.state import StepResult, StepStatus, WorkflowState, parse_time, utcnow
from wfstate.stores import records as framing

if TYPE_CHECKING:
    from wfstate.engine.executor import Executor

__all__ = ["LOOP_TYPES", "IterationScope", "LoopsView", "keeps_progress", "run_loop"]

logger = logging.getLogger("wfstate.engine")

_VISIBLE = (StepStatus.COMPLETED, StepStatus.FAILED)
# Body steps run in one iteration at most (jumps between body steps could cycle).
MAX_BODY_RUNS = 10_000
_LOOP_ALIASES = {
    "Item": "item",
    "Index": "index",
    "Index1": "index1",
    "First": "first",
    "Last": "last",
    "Length": "length",
    "Parent": "parent",
}


class LoopError(WFStateError):
    """A loop could not start or go on (items, max_iterations, a condition): its failure."""


def keeps_progress(state: WorkflowState, name: str, from_state: str) -> bool:
    """Whether a resume from ``from_state`` continues the loop ``name`` where it was
    (rather than rewinding it): a resume from the current state of a loop that did not
    complete."""
    entry = state.states.get(name)
    return (
        from_state == "current"
        and entry is not None
        and entry.loop is not None
        and entry.status != StepStatus.COMPLETED
    )


# --- what templates see ----------------------------------------------------------------


class IterationScope:
    """One iteration: where its body results live, and its ``loop`` variables."""

    def __init__(
        self,
        *,
        loop: str,
        index: int,
        item: Any,
        length: int | None,
        parent: IterationScope | None,
        prefix: str,
        spill_prefix: str,
        info: dict[str, Any],
    ) -> None:
        self.loop = loop
        self.index = index
        self.item = item
        self.length = length
        self.parent = parent
        self.prefix = prefix
        self.spill_prefix = spill_prefix
        self.info = info
        self.results: dict[str, StepResult] = {}
        self._vars: dict[str, Any] | None = None

    def key(self, name: str) -> str:
        """The key of body step ``name``'s result in ``state.states``."""
        return self.prefix + name

    def spill(self, name: str) -> str:
        """The side-file name of body step ``name``'s whole output (one per iteration)."""
        spill = self.spill_prefix + name
        if len(spill) > 120:  # side-file names are at most 128 characters
            digest = hashlib.sha256(spill.encode()).hexdigest()[:16]
            spill = f"{self.spill_prefix[:80]}{digest}"
        return spill

    def chain(self) -> list[IterationScope]:
        """This scope and its parents, outermost first."""
        out: list[IterationScope] = []
        scope: IterationScope | None = self
        while scope is not None:
            out.append(scope)
            scope = scope.parent
        return out[::-1]

    def loop_vars(self) -> dict[str, Any]:
        if self._vars is None:
            i, length = self.index, self.length
            values: dict[str, Any] = {
                "name": self.loop,
                "item": self.item,
                "index": i,
                "index1": i + 1,
                "first": i == 0,
                "last": length is not None and i == length - 1,
                "length": length,
                "parent": self.parent.loop_vars() if self.parent else None,
            }
            for alias, field in _LOOP_ALIASES.items():
                values[alias] = values[field]
            self._vars = values
        return self._vars


def scope_context(ex: Executor, scope: IterationScope | None) -> dict[str, Any]:
    """The template context of a step in ``scope`` (the run's context if None)."""
    context = ex._context()
    if scope is None:
        return context
    states: dict[str, Any] = context["states"]
    if any("." in key for key in states):  # other iterations' scoped results: not names
        states = {k: v for k, v in states.items() if "." not in k}
    with ex._lock:
        for level in scope.chain():
            if not level.prefix:
                continue  # a sequential iteration's results are the run's own states
            for name, result in level.results.items():
                if result.status in _VISIBLE:
                    states[name] = _step_fields(result)
    context["states"] = states
    context["loop"] = scope.loop_vars()
    context["loops"] = LoopsView(ex, scope)
    return context


class _Iterations(Sequence[dict[str, Any]]):
    """A loop's finished iterations, by index: a view of the live list of records, which
    is kept in index order (records are inserted in order as iterations finish), so a
    template reading ``iterations[i]`` in every iteration of a long loop costs O(1)."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [iteration_fields(r) for r in self._records[i]]
        return iteration_fields(self._records[i])


def iteration_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a template sees of one finished iteration: its body steps by name (each with
    ``output``, ``exit_code``...), and ``index``, ``item``, ``status``, ``states``."""
    states = {
        name: _step_fields(StepResult.from_dict(result))
        for name, result in (record.get("states") or {}).items()
    }
    return {
        **states,
        "states": states,
        "index": record.get("index"),
        "item": record.get("item"),
        "status": record.get("status"),
    }


class LoopsView(Mapping[str, Any]):
    """``loops.<name>``: a loop's ``iterations``, ``count``, ``status``, ``length``."""

    def __init__(self, ex: Executor, scope: IterationScope | None) -> None:
        self._ex = ex
        self._scope = scope

    def _entry(self, name: str) -> StepResult | None:
        state = self._ex._state
        assert state is not None
        keys = [level.key(name) for level in reversed(self._scope.chain())] if self._scope else []
        for key in [*keys, name]:
            entry = state.states.get(key)
            if entry is not None and entry.loop is not None:
                return entry
        return None

    def __getitem__(self, name: str) -> dict[str, Any]:
        entry = self._entry(name)
        if entry is None:
            raise KeyError(name)
        summary = entry.loop or {}
        records = records_for(self._ex, summary)
        return {
            "iterations": _Iterations(records),
            "count": len(records),
            "status": str(entry.status),
            "length": summary.get("length"),
        }

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, s in self._ex.definition.states.items() if s.type in LOOP_TYPES])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def records_for(ex: Executor, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A loop's finished iteration records: the running loop's own list, or read once.

    Raises:
        CorruptState, StorageError: as :func:`load_records`.
    """
    file = str(summary["file"])
    records = ex._loop_records.get(file)
    if records is None:
        records = ex._loop_records[file] = load_records(ex, summary)
    return records


def load_records(ex: Executor, summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A loop's finished iteration records (the side file, up to what the document counts).

    Raises:
        CorruptState: the side file holds fewer valid records than the document counts.
        StorageError: it cannot be read.
    """
    state = ex._state
    assert state is not None
    file, count = str(summary["file"]), int(summary["records"])
    data = ex.store.read_records(state.workflow_id, file)
    found, _ = framing.decode(data, limit=count)
    if len(found) < count:
        raise CorruptState(
            f"run {state.workflow_id}: loop side file {file} holds {len(found)} valid records, "
            f"the state counts {count}"
        )
    return sorted((r for r in found if r.get("kind") == "iteration"), key=_by_index)


def _by_index(record: Mapping[str, Any]) -> int:
    return int(record["index"])


# --- running a loop -----------------------------------------------------------------------


@dataclass
class _Outcome:
    status: str  # completed, failed, cancelled
    error: str | None = None
    exit_to: str | None = None


def run_loop(
    ex: Executor,
    sdef: StateDef,
    *,
    scope: IterationScope | None = None,
    resume: bool = False,
    set_current: bool = True,
) -> tuple[StepResult, str | None]:
    """Run the loop ``sdef``; its result and, if a body step left the loop, where to.

    With ``resume``, a loop whose result in the state did not complete goes on from
    its recorded progress: finished iterations are not run again.

    Raises:
        StorageError, StateLocked, CorruptState: a checkpoint or the side file failed.
    """
    return _Loop(ex, sdef, scope, set_current).run(resume)


class _Loop:
    def __init__(
        self, ex: Executor, sdef: StateDef, scope: IterationScope | None, set_current: bool
    ) -> None:
        self.ex = ex
        self.sdef = sdef
        self.scope = scope
        self.set_current = set_current
        self.key = scope.key(sdef.name) if scope else sdef.name
        self.items: list[Any] | None = None
        self.records: list[dict[str, Any]] = []
        self.done: set[int] = set()
        self.error: str | None = None
        self.cancelled = False
        self.exit_to: str | None = None
        self.entry: StepResult | None = None
        self.summary: dict[str, Any] = {}
        self.parallel = False
        self._last_results: dict[str, StepResult] = {}

    @property
    def state(self) -> WorkflowState:
        assert self.ex._state is not None
        return self.ex._state

    def stop(self) -> bool:
        return self.ex.should_stop()

    # --- start / restore ---------------------------------------------------------------

    def run(self, resume: bool) -> tuple[StepResult, str | None]:
        existing = self.state.states.get(self.key)
        if (
            resume
            and existing is not None
            and existing.loop is not None
            and existing.status != StepStatus.COMPLETED
        ):
            self._restore(existing)
        else:
            try:
                self._start()
            except (StorageError, StateLocked):
                raise
            except WFStateError as exc:
                return self._fail_to_start(str(exc)), None
        self.parallel = int(self.summary.get("concurrency") or 1) > 1
        if self.parallel:
            self._run_parallel()
        else:
            self._run_sequential()
        return self._end(), self.exit_to

    def _context(self) -> dict[str, Any]:
        return scope_context(self.ex, self.scope)

    def _limit(self, context: dict[str, Any]) -> int:
        raw = self.sdef.max_iterations
        value = render_value(raw, context) if isinstance(raw, str) else raw
        try:
            limit = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            limit = None
        if limit is None or not 1 <= limit <= MAX_ITERATIONS_CAP:
            raise LoopError(
                f"max_iterations {raw!r} is {value!r}: it must be an integer "
                f"from 1 to {MAX_ITERATIONS_CAP}"
            )
        return limit

    def _items(self, context: dict[str, Any]) -> list[Any]:
        raw = self.sdef.items
        value = render_value(raw, context)
        if isinstance(value, str):
            try:
                value = orjson.loads(value)
            except orjson.JSONDecodeError as exc:
                raise LoopError(
                    f"items {raw!r} rendered to {value[:80]!r}, which is not a JSON list: {exc}"
                ) from None
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise LoopError(f"items {raw!r} is a {type(value).__name__}, not a list")
        try:
            orjson.dumps(value)
        except TypeError as exc:
            raise LoopError(f"items {raw!r} are not JSON-serialisable: {exc}") from None
        return value

    def _start(self) -> None:
        sdef, state = self.sdef, self.state
        context = self._context()
        limit = self._limit(context)
        length: int | None = None
        total: int | None = None
        if sdef.type == "for_each":
            items = self._items(context)
            total = len(items)
            if total > limit:
                logger.warning(
                    "run %s: loop %s has %d items; max_iterations %d runs the first %d",
                    state.workflow_id,
                    sdef.name,
                    total,
                    limit,
                    limit,
                )
                items = items[:limit]
            self.items = items
            length = len(items)
        now = utcnow()
        # A side-file name is at most 128 characters (validate_name): long names are cut.
        file = f"{sdef.name[:64]}.{secrets.token_hex(4)}"
        header = {
            "kind": "start",
            "loop": sdef.name,
            "key": self.key,
            "type": sdef.type,
            "items": self.items,
            "max_iterations": limit,
            "started_at": now,
        }
        concurrency = 1
        if sdef.type == "for_each" and sdef.max_concurrent:
            concurrency = max(1, min(int(sdef.max_concurrent), length or 1))
        self.summary = {
            "type": sdef.type,
            "file": file,
            "records": 1,
            "max_iterations": limit,
            "length": length,
            "total_items": total,
            "concurrency": concurrency,
            "done": 0,
            "running": {},
            "broke_at": None,
            "stopped": None,
        }
        self.entry = StepResult(
            name=sdef.name, status=StepStatus.RUNNING, started_at=now, loop=self.summary
        )
        self.ex._loop_records[file] = self.records
        with self.ex._lock:
            # The header is durable before the document names the file.
            self.ex.store.append_records(state.workflow_id, file, framing.encode(header))
            state.states[self.key] = self.entry
            if self.set_current:
                state.current_state = sdef.name
            self.ex._checkpoint()
        self.ex._emit({"event": "step_started", "state": sdef.name, "attempt": 1})

    def _restore(self, entry: StepResult) -> None:
        state = self.state
        summary = entry.loop
        assert summary is not None
        file, count = str(summary["file"]), int(summary["records"])
        data = self.ex.store.read_records(state.workflow_id, file)
        found, size = framing.decode(data, limit=count)
        if len(found) < count:
            raise CorruptState(
                f"run {state.workflow_id}: loop '{self.sdef.name}': side file {file} holds "
                f"{len(found)} valid records, the state counts {count}"
            )
        if size < len(data):
            # A torn record, or iterations the document never counted: they run again.
            self.ex.store.truncate_records(state.workflow_id, file, size)
            logger.info(
                "run %s: loop %s: dropped %d bytes after record %d of %s",
                state.workflow_id,
                self.sdef.name,
                len(data) - size,
                count,
                file,
            )
        header = found[0] if found else {}
        self.items = header.get("items")
        self.records = sorted((r for r in found if r.get("kind") == "iteration"), key=_by_index)
        self.done = {int(r["index"]) for r in self.records}
        self.ex._loop_records[file] = self.records
        self.summary = summary
        summary["done"] = len(self.records)
        with self.ex._lock:
            entry.status = StepStatus.RUNNING
            entry.error = None
            entry.completed_at = None
            entry.duration_ms = None
            if self.set_current:
                state.current_state = self.sdef.name
        self.entry = entry
        self.ex._emit({"event": "step_started", "state": self.sdef.name, "attempt": 1})

    def _fail_to_start(self, error: str) -> StepResult:
        now = utcnow()
        entry = StepResult(
            name=self.sdef.name,
            status=StepStatus.FAILED,
            error=error,
            started_at=now,
            completed_at=now,
            duration_ms=0,
        )
        with self.ex._lock:
            self.state.states[self.key] = entry
            if self.set_current:
                self.state.current_state = self.sdef.name
        self.ex._emit(
            {
                "event": "step_finished",
                "state": self.sdef.name,
                "status": "failed",
                "attempt": 1,
                "duration_ms": 0,
                "error": error,
            }
        )
        return entry

    # --- scheduling --------------------------------------------------------------------

    def _length(self) -> int | None:
        return None if self.items is None else len(self.items)

    def _run_sequential(self) -> None:
        running = self.summary["running"]
        for key in sorted(running, key=int):
            if self._after(int(key), self._iteration(int(key), running[key])):
                return
        limit = int(self.summary["max_iterations"])
        length = self._length()
        index = max([*self.done, -1]) + 1
        while True:
            if length is not None and index >= length:
                return
            if index >= limit:
                if self.sdef.type == "while":
                    self.summary["stopped"] = "max_iterations"
                    logger.warning(
                        "run %s: while loop %s stopped at max_iterations %d",
                        self.state.workflow_id,
                        self.sdef.name,
                        limit,
                    )
                return
            if self.stop():
                self.cancelled = True
                return
            if self.sdef.type == "while":
                try:
                    go_on = self._condition(index)
                except WFStateError as exc:
                    self.error = f"while condition: {exc}"
                    return
                if not go_on:
                    return
            if self._after(index, self._iteration(index, None)):
                return
            index += 1

    def _condition(self, index: int) -> bool:
        assert self.sdef.while_ is not None
        scope = self._scope(index, {"index": index})
        context = scope_context(self.ex, scope)
        try:
            return evaluate(self.sdef.while_, context)
        except TemplateError as exc:
            # Before the first iteration the body has no results yet: a condition on
            # them (``states.step.exit_code == 0``) lets the first iteration run.
            body = self.sdef.body
            if index == 0 and any(f"'states.{b}" in str(exc) for b in body):
                return True
            raise

    def _run_parallel(self) -> None:
        length = self._length() or 0
        running = self.summary["running"]
        todo = [i for i in range(length) if i not in self.done]
        workers = max(1, min(int(self.summary["concurrency"]), len(todo) or 1))
        stopping = False
        with ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"wfstate-{self.sdef.name}"
        ) as pool:
            futures: dict[Future[_Outcome], int] = {}
            while todo or futures:
                while todo and not stopping and len(futures) < workers:
                    if self.stop():
                        self.cancelled = stopping = True
                        break
                    index = todo.pop(0)
                    info = running.get(str(index))
                    futures[pool.submit(self._iteration, index, info)] = index
                if not futures:
                    break
                finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for future in finished:
                    index = futures.pop(future)
                    if self._after(index, future.result()):
                        stopping = True

    # --- one iteration -------------------------------------------------------------------

    def _scope(self, index: int, info: dict[str, Any]) -> IterationScope:
        parent_prefix = self.scope.prefix if self.scope else ""
        item = self.items[index] if self.items is not None and index < len(self.items) else None
        return IterationScope(
            loop=self.sdef.name,
            index=index,
            item=item,
            length=self._length(),
            parent=self.scope,
            prefix=parent_prefix + (f"{self.sdef.name}.{index}." if self.parallel else ""),
            spill_prefix=f"{self.summary['file']}.{index}.",
            info=info,
        )

    def _iteration(self, index: int, info: dict[str, Any] | None) -> _Outcome:
        ex, state, body = self.ex, self.state, self.sdef.body
        resuming = info is not None
        if info is None:
            info = {"index": index, "started_at": utcnow(), "step": None, "steps": []}
            if self.items is not None:
                info["item"] = self.items[index]
            with ex._lock:
                self.summary["running"][str(index)] = info
        scope = self._scope(index, info)
        with ex._lock:
            for name in info.get("steps") or ():
                found = state.states.get(scope.key(name))
                if found is not None:
                    scope.results[name] = found
        position = 0
        if resuming and info.get("step") in body:
            position = body.index(info["step"])
        first = position if resuming else -1
        runs = 0
        while position < len(body):
            runs += 1
            if runs > MAX_BODY_RUNS:
                # Body steps jumping to each other for ever: the iteration fails.
                return _Outcome("failed", f"{MAX_BODY_RUNS} body steps ran in one iteration")
            name = body[position]
            bdef = ex.definition.states[name]
            with ex._lock:
                info["step"] = name
            inner_exit: str | None = None
            if bdef.type in LOOP_TYPES:
                result, inner_exit = run_loop(
                    ex, bdef, scope=scope, resume=position == first, set_current=False
                )
            else:
                result = ex._run_step(bdef, set_current=False, stop=self.stop, scope=scope)
            with ex._lock:
                scope.results[name] = result
                if name not in info["steps"]:
                    info["steps"].append(name)
            if result.status == StepStatus.CANCELLED:
                return _Outcome("cancelled", "cancelled")
            ok = result.status == StepStatus.COMPLETED or bdef.continue_on_error
            try:
                target = inner_exit or self._route(bdef, ok, scope)
            except WFStateError as exc:
                return _Outcome("failed", f"step '{name}': {exc}")
            if target is None:
                if not ok:
                    return _Outcome(
                        "failed", f"step '{name}' failed ({result.error}) and has no failure route"
                    )
                position += 1
            elif target == self.sdef.name:
                break
            elif target in body:
                position = body.index(target)
            else:
                return _Outcome("completed", exit_to=target)
        return _Outcome("completed")

    def _route(self, bdef: StateDef, ok: bool, scope: IterationScope) -> str | None:
        if bdef.transitions:
            context = scope_context(self.ex, scope)
            for transition in bdef.transitions:
                if transition.when is None or evaluate(transition.when, context):
                    return transition.goto
        return bdef.on_success if ok else bdef.on_failure

    def _after(self, index: int, outcome: _Outcome) -> bool:
        """Record a finished iteration; True when the loop stops here."""
        if outcome.status == "cancelled":
            self.cancelled = True
            return True
        if outcome.status == "failed":
            # Not recorded: the iteration stays in flight, so a resume runs it again.
            self.error = f"iteration {index}: {outcome.error}"
            return True
        self._record(index, outcome)
        if outcome.exit_to is not None:
            self.exit_to = self.exit_to or outcome.exit_to
            return True
        if self.sdef.break_when:
            info = {"index": index}
            scope = self._scope(index, info)
            scope.results = self._last_results
            try:
                if evaluate(self.sdef.break_when, scope_context(self.ex, scope)):
                    self.summary["broke_at"] = index
                    return True
            except WFStateError as exc:
                self.error = f"break_when after iteration {index}: {exc}"
                return True
        return False

    def _record(self, index: int, outcome: _Outcome) -> None:
        ex, state = self.ex, self.state
        summary = self.summary
        with ex._lock:
            info = summary["running"].get(str(index)) or {}
            scope = self._scope(index, info)
            results: dict[str, StepResult] = {}
            for name in info.get("steps") or ():
                found = state.states.get(scope.key(name))
                if found is not None:
                    results[name] = found
            record = {
                "kind": "iteration",
                "index": index,
                "item": info.get("item"),
                "status": outcome.status,
                "exit_to": outcome.exit_to,
                "started_at": info.get("started_at"),
                "completed_at": utcnow(),
                "states": {name: result.to_dict() for name, result in results.items()},
            }
            # Durable before the document counts it (the next checkpoint does).
            ex.store.append_records(state.workflow_id, summary["file"], framing.encode(record))
            summary["records"] = int(summary["records"]) + 1
            summary["done"] = int(summary["done"]) + 1
            summary["running"].pop(str(index), None)
            # In index order (parallel iterations finish in any order): an append when
            # they finish in order.
            bisect.insort(self.records, record, key=_by_index)
            self.done.add(index)
            if scope.prefix:
                # The iteration's scoped results leave the document (they are in the
                # record); the plain names show the latest finished iteration's.
                base = self.scope.prefix if self.scope else ""
                for key in [k for k in state.states if k.startswith(scope.prefix)]:
                    del state.states[key]
                for name, result in results.items():
                    state.states[base + name] = result
            self._last_results = results
            if self.parallel:
                # No step start of this iteration follows to carry the count (the others
                # may be long): say it now, atomically (a power cut may lose it, and the
                # iteration then runs again; the side file is durable already).
                ex._checkpoint(durable=False)
        ex._emit(
            {
                "event": "iteration_finished",
                "state": self.sdef.name,
                "index": index,
                "status": outcome.status,
            }
        )

    # --- the end -------------------------------------------------------------------------

    def _end(self) -> StepResult:
        entry = self.entry
        assert entry is not None
        summary = self.summary
        if self.cancelled:
            status, error = StepStatus.CANCELLED, "cancelled"
        elif self.error:
            status, error = StepStatus.FAILED, self.error
        else:
            status, error = StepStatus.COMPLETED, None
        completed = utcnow()
        with self.ex._lock:
            entry.status = status
            entry.error = error
            entry.output = {
                "iterations": summary["done"],
                "broke_at": summary.get("broke_at"),
                "stopped": summary.get("stopped"),
            }
            entry.completed_at = completed
            start, end = parse_time(entry.started_at), parse_time(completed)
            if start is not None and end is not None:
                entry.duration_ms = int((end - start).total_seconds() * 1000)
        self.ex._emit(
            {
                "event": "step_finished",
                "state": self.sdef.name,
                "status": str(status),
                "attempt": 1,
                "duration_ms": entry.duration_ms,
                "error": error,
            }
        )
        return entry


# --- reading a run's iterations (the admin, the API) ---------------------------------------


def read_iterations(
    store: Any,
    state: WorkflowState,
    loop: str,
    *,
    file: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> dict[str, Any]:
    """A loop's iterations as the admin and the API show them, read from its side file.

    ``loop`` is a loop state of the run; ``file`` picks one run of it (a nested loop runs
    once per outer iteration: each outer iteration's record names its inner loop's file),
    by default the one in ``states``. Returns the loop's summary (``count``, ``length``,
    ``running``: the iterations in flight, with the body step each is at), and
    ``iterations[offset:offset + limit]``, each with every body step's result.

    Raises:
        RunNotFound: the run has no such loop (or no such file for it).
        CorruptState, StorageError: the side file is behind the document, or unreadable.
    """
    from wfstate.exceptions import RunNotFound

    entry = state.states.get(loop)
    summary = entry.loop if entry is not None else None
    if summary is None:
        raise RunNotFound(f"run {state.workflow_id} has no loop '{loop}' with iterations")
    count: int | None = int(summary["records"])
    if file is not None and file != summary.get("file"):
        if not file.startswith(f"{loop}.") or not _known_file(store, state, loop, file):
            raise RunNotFound(f"run {state.workflow_id}: loop '{loop}' has no run {file!r}")
        count = None  # an earlier run of the loop: every valid record of its file
    else:
        file = str(summary["file"])
    found, _ = framing.decode(store.read_records(state.workflow_id, file), limit=count)
    if count is not None and len(found) < count:
        raise CorruptState(
            f"run {state.workflow_id}: loop '{loop}': side file {file} holds {len(found)} "
            f"valid records, the state counts {count}"
        )
    header = found[0] if found and found[0].get("kind") == "start" else {}
    iterations = sorted(
        (r for r in found if r.get("kind") == "iteration"), key=lambda r: r["index"]
    )
    offset, limit = max(0, offset), max(0, min(limit, 1000))
    current = summary.get("running") if file == summary.get("file") else {}
    return {
        "loop": loop,
        "file": file,
        "type": header.get("type") or summary.get("type"),
        "status": str(entry.status) if entry is not None else None,
        "count": len(iterations),
        "length": len(header["items"]) if isinstance(header.get("items"), list) else None,
        "max_iterations": header.get("max_iterations"),
        "broke_at": summary.get("broke_at") if file == summary.get("file") else None,
        "running": [dict(v) for _, v in sorted((current or {}).items(), key=lambda kv: int(kv[0]))],
        "offset": offset,
        "limit": limit,
        "iterations": iterations[offset : offset + limit],
    }


def _known_file(store: Any, state: WorkflowState, loop: str, file: str) -> bool:
    """Whether ``file`` names a run of ``loop`` in this run (it must exist, and be a
    loop side-file name: a name from the request never reaches a path unchecked)."""
    from wfstate.stores.base import validate_name

    try:
        validate_name(file)
    except ValueError:
        return False
    return bool(store.read_records(state.workflow_id, file))
