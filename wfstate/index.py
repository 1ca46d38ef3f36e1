"""The index: projecting state files into ``WorkflowRun`` rows (docs/admin.md).

A row is a projection of its file and nothing more: any row can be deleted and rebuilt
by :func:`sync`, and when a row and its file disagree the file wins. Nothing here ever
raises into a run: the engine calls the listener of :func:`make_listener` after every
checkpoint, and an index failure is logged (logger ``wfstate.index``) and repaired later
by ``sync_workflow_index``.

Three ways in:

* :func:`index_state` upserts one run's row, unless the row already holds a newer
  revision (two writers racing must not move a row backwards);
* :func:`make_listener` returns the engine's per-checkpoint hook: a status change is
  written at once, other checkpoints are coalesced, and a row is never more than about
  half a second behind its file (a small flusher thread owns the database writes);
* :func:`sync` rebuilds rows from the files in bulk (``bulk_create`` with
  ``update_conflicts``), flags corrupt files, and can prune rows whose file is gone.
  :func:`inspect` is the same walk without writing, for ``doctor``.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import os
import queue
import shutil
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from django.conf import settings
from django.db import connections, models, router, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from wfstate.exceptions import CorruptState, RunNotFound
from wfstate.models import RunStatusChoices, WorkflowRun
from wfstate.state import SCHEMA_VERSION, RunStatus, StepStatus, WorkflowState, parse_time
from wfstate.stores.base import StateStore
from wfstate.stores.jsonfile import JSONFileStore

logger = logging.getLogger("wfstate.index")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# The error summary kept in a row; the whole error and traceback stay in the file.
ERROR_SUMMARY_CHARS = 500

# Columns a sync writes (everything but the primary key and ``indexed_at``, which
# ``bulk_create`` fills from ``auto_now`` on insert and we set ourselves on update).
ROW_FIELDS = (
    "workflow_name",
    "workflow_version",
    "status",
    "current_state",
    "started_at",
    "updated_at",
    "completed_at",
    "duration_ms",
    "steps_done",
    "steps_total",
    "revision",
    "error",
    "corrupt",
)

StepCounter = Callable[[str], "int | None"]
Progress = Callable[[int, int], None]


# --- projection ---------------------------------------------------------------------------


def definition_step_count(workflow_name: str) -> int | None:
    """How many non-terminal states the workflow's current definition has, or None.

    Used as a run's ``steps_total`` while it runs. A missing or invalid definition is
    not an error here: the run's own states are counted instead.
    """
    try:
        from wfstate.definitions import get_registry

        definition = get_registry().get(workflow_name)
    except Exception:  # no registry yet, unknown or invalid definition
        return None
    return sum(1 for s in definition.states.values() if s.type != "terminal")


class _CachedStepCounter:
    """``definition_step_count`` remembered per workflow name for one sync or listener."""

    def __init__(self) -> None:
        self._counts: dict[str, int | None] = {}

    def __call__(self, workflow_name: str) -> int | None:
        try:
            return self._counts[workflow_name]
        except KeyError:
            count = self._counts[workflow_name] = definition_step_count(workflow_name)
            return count


def _summary(text: str | None) -> str:
    if not text:
        return ""
    text = str(text).strip()
    if len(text) > ERROR_SUMMARY_CHARS:
        return text[: ERROR_SUMMARY_CHARS - 1] + "…"
    return text


_DONE = frozenset({"completed", "failed", "skipped"})
_FINAL = frozenset({"completed", "failed", "cancelled"})
_RUN_STATUSES = frozenset(str(s) for s in RunStatus)
_STEP_STATUSES = frozenset(str(s) for s in StepStatus)


def project(document: Mapping[str, Any], step_count: StepCounter | None = None) -> dict[str, Any]:
    """The columns of a run's row, from its state document alone: THE projection.

    ``document`` is a state as ``WorkflowState.to_dict()`` shapes it (the step results
    may be any mapping with the ``StepResult`` fields). :func:`row_fields` projects a
    loaded state through this function, and ``sync`` projects a parsed file through it
    directly, so the two can never disagree.

    ``steps_total`` is the definition's number of non-terminal states while the run is
    live (at least the states the run reached), and the states the run reached once it
    is final, so a finished run's progress bar reads what it did, not what it skipped.
    (Written for speed: ``sync`` calls it for every file.)
    """
    steps = document.get("states") or {}
    reached = len(steps)
    done = 0
    failed = ""  # the first failed step's error
    for step in steps.values():
        step_status = step.get("status", "running")
        if step_status in _DONE:
            done += 1
            if step_status == "failed" and not failed and step.get("error"):
                failed = f"{step['name']}: {step['error']}"
    status = str(document["status"])
    name = document["workflow_name"]
    if status in _FINAL:
        total = reached
    else:
        total = max((step_count or definition_step_count)(name) or 0, reached)
    started = parse_time(document.get("started_at"))
    updated = parse_time(document.get("updated_at"))
    completed = parse_time(document.get("completed_at"))
    end = completed or updated
    duration = int((end - started).total_seconds() * 1000) if started and end else None
    error = document.get("error")
    return {
        "workflow_name": name[:128],
        "workflow_version": (document.get("workflow_version") or "")[:64],
        "status": status,
        "current_state": (document.get("current_state") or "")[:128],
        "started_at": started,
        "updated_at": updated,
        "completed_at": completed,
        "duration_ms": duration,
        "steps_done": done,
        "steps_total": max(total, done),
        "revision": document.get("revision") or 0,
        "error": _summary(error) if error else _summary(failed),
        "corrupt": False,
    }


def _document(state: WorkflowState) -> dict[str, Any]:
    """``state.to_dict()`` without copying the step results (their fields are read as is)."""
    document = state.shallow_dict()
    document["states"] = {name: vars(step) for name, step in state.states.items()}
    return document


def row_fields(state: WorkflowState, step_count: StepCounter | None = None) -> dict[str, Any]:
    """The columns of a run's row, computed from its state alone (see :func:`project`)."""
    return project(_document(state), step_count)


def error_summary(state: WorkflowState) -> str:
    """The run's error, else the first failed step's, cut to a summary."""
    return str(row_fields(state, lambda name: None)["error"])


def _plain_document(document: Any, workflow_id: str) -> bool:
    """Whether a parsed file is a current, well-typed state document of ``workflow_id``.

    For such a document ``WorkflowState.from_dict()`` succeeds and changes nothing that
    :func:`project` reads, so projecting the document is projecting the loaded state.
    Anything else (an older schema, a missing or odd-typed key, another run's id) is
    left to the store's own parser, which upgrades it or says precisely what is wrong.
    """
    if type(document) is not dict:
        return False
    get = document.get
    version = get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        return False
    if get("workflow_id") != workflow_id or type(get("workflow_name")) is not str:
        return False
    if type(get("status")) is not str or get("status") not in _RUN_STATUSES:
        return False
    started, updated = get("started_at"), get("updated_at")
    if type(started) is not str or type(updated) is not str or not started or not updated:
        return False
    revision = get("revision")
    if type(revision) is not int or revision < 0:
        return False
    for key in ("workflow_version", "current_state", "completed_at"):
        value = get(key)
        if value is not None and type(value) is not str:
            return False
    inputs, history, states = get("inputs"), get("history"), get("states")
    if inputs is not None and type(inputs) is not dict:
        return False
    if history is not None and type(history) is not list:
        return False
    if states is None:
        return True
    if type(states) is not dict:
        return False
    for step in states.values():
        if type(step) is not dict or "name" not in step:
            return False
        step_status = step.get("status", "running")
        if type(step_status) is not str or step_status not in _STEP_STATUSES:
            return False
        attempt = step.get("attempt")
        if attempt is not None and type(attempt) is not int:
            return False
    return True


def corrupt_fields(error: BaseException | str) -> dict[str, Any]:
    """The columns that flag a run's file as corrupt (other columns are kept)."""
    return {"status": RunStatusChoices.CORRUPT, "corrupt": True, "error": _summary(str(error))}


# --- one row ----------------------------------------------------------------------------------


def _upsert(workflow_id: str, fields: dict[str, Any]) -> bool:
    """Write a row unless it holds a newer revision. Returns whether it was written."""
    now = timezone.now()
    # A corrupt row's revision is whatever the file said before it broke: a repaired
    # file replaces it whatever its revision.
    newer_or_same = Q(revision__lte=fields["revision"]) | Q(corrupt=True)
    with transaction.atomic():
        updated = WorkflowRun.objects.filter(newer_or_same, workflow_id=workflow_id).update(
            indexed_at=now, **fields
        )
        if updated:
            return True
        if WorkflowRun.objects.filter(workflow_id=workflow_id).exists():
            return False  # the row is ahead of this state: leave it
        WorkflowRun.objects.create(workflow_id=workflow_id, **fields)
        return True


def index_state(state: WorkflowState, *, step_count: StepCounter | None = None) -> bool:
    """Create or update the run's row from ``state``.

    A row that already holds a newer revision is left alone (returns False): the
    listener of a slower writer must not move a row backwards. :func:`sync` and
    :func:`reindex` are where the file wins unconditionally.
    """
    return _upsert(state.workflow_id, row_fields(state, step_count))


def index_corrupt(workflow_id: str, error: BaseException | str) -> None:
    """Flag a run's row corrupt, with the error; creates a bare row when there is none."""
    fields = corrupt_fields(error)
    with transaction.atomic():
        if not WorkflowRun.objects.filter(workflow_id=workflow_id).update(
            indexed_at=timezone.now(), **fields
        ):
            WorkflowRun.objects.create(workflow_id=workflow_id, workflow_name="?", **fields)


def remove(workflow_id: str) -> int:
    """Delete the run's row (its file is someone else's business). Returns rows deleted."""
    deleted, _ = WorkflowRun.objects.filter(workflow_id=workflow_id).delete()
    return deleted


def reindex(workflow_id: str, store: StateStore | None = None) -> str:
    """Rebuild one run's row from its file; the file wins whatever the revisions.

    Returns what happened: ``"indexed"``, ``"corrupt"`` or ``"removed"`` (no file).
    """
    from wfstate.stores import get_store

    store = store or get_store()
    try:
        state = store.load(workflow_id)
    except RunNotFound:
        remove(workflow_id)
        return "removed"
    except CorruptState as exc:
        index_corrupt(workflow_id, exc)
        return "corrupt"
    fields = row_fields(state)
    with transaction.atomic():
        if not WorkflowRun.objects.filter(workflow_id=workflow_id).update(
            indexed_at=timezone.now(), **fields
        ):
            WorkflowRun.objects.create(workflow_id=workflow_id, **fields)
    return "indexed"


# --- the engine's listener ----------------------------------------------------------------------


class IndexListener:
    """Called by the engine after every checkpoint; keeps the rows close behind.

    The call itself only projects the state (a few microseconds) and hands the row to a
    flusher thread, which owns every database write of the listener, so an executor
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
        self._steps = _CachedStepCounter()

    def __call__(self, state: WorkflowState) -> None:
        try:
            fields = self._project(state)
            with self._cond:
                if self._closed:
                    closed = True
                else:
                    closed = False
                    self._hand_over(state.workflow_id, fields)
            if closed:
                # A checkpoint after close(): rare, written here rather than dropped.
                self._write(state.workflow_id, fields)
        except Exception:
            logger.exception("could not index run %s", getattr(state, "workflow_id", "?"))

    def _project(self, state: WorkflowState) -> dict[str, Any]:
        # Parallel branches may mutate the state while we read it: try again.
        for attempt in range(3):
            try:
                return row_fields(state, self._steps)
            except RuntimeError:  # dictionary changed size during iteration
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _hand_over(self, workflow_id: str, fields: dict[str, Any]) -> None:
        now = time.monotonic()
        status_changed = self._last_status.get(workflow_id) != fields["status"]
        self._last_status[workflow_id] = fields["status"]
        self._pending[workflow_id] = fields
        self._queued += 1
        if status_changed:
            self._deadline = now
        elif self._deadline is None:
            self._deadline = now + self.delay
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="wfstate-index-flusher", daemon=True
            )
            self._thread.start()
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
                for workflow_id, fields in batch.items():
                    self._write(workflow_id, fields)
                with self._cond:
                    self._written = upto
                    self._cond.notify_all()
        finally:
            # The connections this thread opened are its own: close them.
            connections.close_all()
            with self._cond:
                self._written = self._queued
                self._cond.notify_all()

    @staticmethod
    def _write(workflow_id: str, fields: dict[str, Any]) -> None:
        try:
            _upsert(workflow_id, fields)
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


# --- rebuilding from the files ------------------------------------------------------------------


@dataclass
class SyncReport:
    """What a :func:`sync` (or a dry :func:`inspect`) found and did."""

    files: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)  # id -> error
    missing_rows: list[str] = field(default_factory=list)  # files without rows
    drifted: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> differences
    stale_rows: list[str] = field(default_factory=list)  # rows without files
    pruned: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "corrupt": [{"workflow_id": k, "error": v} for k, v in sorted(self.corrupt.items())],
            "missing_rows": sorted(self.missing_rows),
            "drifted": [{"workflow_id": k, **v} for k, v in sorted(self.drifted.items())],
            "stale_rows": sorted(self.stale_rows),
            "pruned": self.pruned,
            "seconds": round(self.seconds, 3),
        }


# How many files a sync reads and compares before it writes what changed, in one short
# transaction: the database is locked while a batch is written, never while files are
# read. Large batches make few commits (each one is a disk sync on SQLite).
SYNC_BATCH = 10_000
# How many files a worker reads per task (small: the pipeline fills and drains fast).
SYNC_READ_CHUNK = 2000
# How often (in files) a sync reports its progress.
SYNC_PROGRESS_EVERY = 1000
# From how many files a sync reads and parses them in a worker process while this one
# compares and writes (forking a worker costs a fraction of a second).
SYNC_PARALLEL_MIN = 10_000

# What projecting a state that parsed but holds nonsense (a time that is not ISO 8601,
# naive and aware times mixed, a name that is not text) raises.
_PROJECTION_ERRORS = (TypeError, ValueError, AttributeError, OverflowError)

# One read result: the row's comparable values, a corrupt file's error, or None for a
# file the worker left to this process's slow path.
_Values = tuple[Any, ...]


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _comparable(fields: dict[str, Any], text_times: bool, tz: dt.tzinfo) -> _Values:
    """A row's values in ``ROW_FIELDS`` order, as the index table returns them.

    With ``text_times`` (SQLite) a datetime is the text Django's SQLite backend stores
    for it (``adapt_datetimefield_value``: naive, in the connection's time zone).
    """
    values = [fields[name] for name in ROW_FIELDS]
    if text_times:
        for i in _DATETIME_AT:
            value = values[i]
            if value is not None:
                values[i] = str(value.astimezone(tz).replace(tzinfo=None))
    return tuple(values)


_DATETIME_AT = tuple(
    i for i, name in enumerate(ROW_FIELDS) if name in ("started_at", "updated_at", "completed_at")
)


def _read_plain(path: str, max_bytes: int) -> bytes | None:
    """A plain state file's bytes in one ``os.read``, or None for anything unusual
    (missing, a link, not a regular file, too big, growing, unreadable): the store's
    own reader then says precisely what is wrong."""
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or size > max_bytes:
            return None
        data = os.read(fd, size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= size else None


@dataclass(frozen=True)
class _PlainReader:
    """Reads, parses and projects the file store's plain, current state files.

    One ``os.read`` per file, ``orjson``, and :func:`project` on the document: no
    ``WorkflowState`` is built. A file that is anything but plain (missing, a link,
    broken, an older schema, odd types) comes back as None, for ``store.load()`` to
    upgrade or to name what is wrong. No database, no shared state: this is what the
    worker process of a parallel sync runs.
    """

    prefix: str  # the store's directory, with a trailing separator
    max_bytes: int
    steps: StepCounter
    text_times: bool
    tz: dt.tzinfo

    def __call__(self, ids: list[str]) -> list[tuple[str, _Values | None]]:
        out: list[tuple[str, _Values | None]] = []
        for workflow_id in ids:
            values = None
            data = _read_plain(f"{self.prefix}{workflow_id}.json", self.max_bytes)
            if data is not None:
                try:
                    document = orjson.loads(data)
                except orjson.JSONDecodeError:
                    document = None
                if document is not None and _plain_document(document, workflow_id):
                    try:
                        fields = project(document, self.steps)
                        values = _comparable(fields, self.text_times, self.tz)
                    except _PROJECTION_ERRORS:
                        values = None  # e.g. a time that is not ISO 8601
            out.append((workflow_id, values))
        return out


def _can_fork_worker() -> bool:
    """A worker process helps (a spare core) and is safe to fork: fork is available and
    this process has no other thread (a thread holding a lock at the fork would leave
    it locked in the child) and is no daemon (which may not have children)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return (
        cores > 1
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not multiprocessing.current_process().daemon
    )


# How many read batches a sync's worker process may be ahead of the rows written, and
# how long a sync waits for it to send one before it reads the files itself.
SYNC_WORKER_AHEAD = 10
SYNC_WORKER_TIMEOUT = 60.0


def _worker_main(
    reader: _PlainReader,
    batches: list[list[str]],
    results: multiprocessing.queues.Queue[Any],
    credits: Any,
) -> None:
    """The worker process of a parallel sync: reads its (inherited) batches in order and
    queues each result, at most ``SYNC_WORKER_AHEAD`` batches ahead of its reader.
    Ctrl-C is the parent's to handle: it stops (kills) the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for batch in batches:
        credits.acquire()
        results.put(reader(batch))
    results.close()
    results.join_thread()


def _read_batches(
    reader: _PlainReader | None, batches: list[list[str]], parallel: bool
) -> Iterator[list[tuple[str, _Values | None]]]:
    """The plain reader's results, batch by batch, in order.

    With ``parallel``, a forked worker process reads and parses them while this one
    compares and writes. No thread is started here: results are received by the
    caller's own thread when it wants the next batch (a receiving thread would contend
    for the GIL with the database writes). If the worker fails or stalls, the remaining
    batches are read here: a sync never fails for want of a worker.
    """
    if reader is None:
        for batch in batches:
            yield [(workflow_id, None) for workflow_id in batch]
        return
    worker = None
    if parallel:
        context = multiprocessing.get_context("fork")
        try:
            results: multiprocessing.queues.Queue[Any] = context.Queue()
            credits = context.Semaphore(SYNC_WORKER_AHEAD)
            worker = context.Process(
                target=_worker_main,
                args=(reader, batches, results, credits),
                name="wfstate-sync-reader",
                daemon=True,
            )
            worker.start()
        except Exception:
            logger.warning("sync: no worker process; reading in this one", exc_info=True)
            worker = None
    try:
        for batch in batches:
            if worker is not None:
                try:
                    result = _receive(worker, results)
                    credits.release()
                except Exception:
                    logger.warning("sync: the worker process failed; reading here", exc_info=True)
                    worker.kill()
                    worker.join()
                    worker = None
                else:
                    yield result
                    continue
            yield reader(batch)
    finally:
        if worker is not None:
            if worker.is_alive():
                worker.kill()  # the caller stopped early
            worker.join()


def _receive(worker: multiprocessing.process.BaseProcess, results: Any) -> Any:
    """The worker's next result; raises if it died or sent nothing for too long."""
    deadline = time.monotonic() + SYNC_WORKER_TIMEOUT
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            if not worker.is_alive():
                raise RuntimeError(f"the worker exited ({worker.exitcode})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no batch within {SYNC_WORKER_TIMEOUT:g}s") from None


def _read_slow(
    store: StateStore, workflow_id: str, steps: StepCounter, table: _Table
) -> _Values | CorruptState | None:
    """``store.load()`` and :func:`row_fields`: the row's values, the CorruptState the
    file raises, or None when the file is gone (deleted since the listing)."""
    try:
        state = store.load(workflow_id)
    except RunNotFound:
        return None
    except CorruptState as exc:
        return exc
    try:
        return table.comparable(row_fields(state, steps))
    except _PROJECTION_ERRORS as exc:
        return CorruptState(f"run {workflow_id} is not a valid state: {exc}")


class _Table:
    """Raw, set-based reads and writes of the index table for ``sync``.

    The ORM's ``bulk_create`` spends most of its time preparing values field by field;
    here a batch is a few ``SELECT ... IN`` and one ``executemany`` upsert (``INSERT ...
    ON CONFLICT (workflow_id) DO UPDATE``, which SQLite and PostgreSQL share). Other
    backends take the ORM's ``bulk_create(update_conflicts=True)``.

    Rows are compared in the form the database returns them: on SQLite the datetime
    columns are read as their stored text (``CAST(... AS TEXT)``, nothing parsed) and
    the file's values are put in that same text form, which is also what is written.
    """

    def __init__(self) -> None:
        self.connection = connections[router.db_for_write(WorkflowRun)]
        vendor = self.connection.vendor
        self.fast = vendor in ("sqlite", "postgresql")
        # SQLite keeps datetimes as text: compare and write that text directly.
        self.text_times = vendor == "sqlite" and bool(settings.USE_TZ)
        self.tz: dt.tzinfo = self.connection.timezone or dt.UTC
        self.lookup = min(self.connection.features.max_query_params or 5000, 5000) - 99
        meta = WorkflowRun._meta
        quote = self.connection.ops.quote_name
        self.table = quote(meta.db_table)
        self.key = quote(self._column("workflow_id"))
        self.columns = [quote(self._column(name)) for name in ROW_FIELDS]
        self.indexed_at = quote(self._column("indexed_at"))
        self.corrupt_at = ROW_FIELDS.index("corrupt")
        self.started_at = ROW_FIELDS.index("started_at")

    @staticmethod
    def _column(name: str) -> str:
        field = WorkflowRun._meta.get_field(name)
        assert isinstance(field, models.Field)
        return str(field.column)

    def comparable(self, fields: dict[str, Any]) -> _Values:
        """The row's values as :meth:`existing` returns them."""
        return _comparable(fields, self.text_times, self.tz)

    def existing(self, ids: list[str]) -> dict[str, _Values]:
        """The rows of ``ids`` that exist, as comparable to :meth:`comparable` values."""
        columns = [
            f"CAST({c} AS TEXT)" if self.text_times and i in _DATETIME_AT else c
            for i, c in enumerate(self.columns)
        ]
        select = f"SELECT {self.key}, {', '.join(columns)} FROM {self.table} WHERE {self.key} IN"  # noqa: S608 - quoted names, bound values
        fetched: list[Any] = []
        with self.connection.cursor() as cursor:
            for part in _chunks(ids, self.lookup):
                cursor.execute(f"{select} ({', '.join(['%s'] * len(part))})", part)
                fetched.extend(cursor.fetchall())
        if self.text_times:
            return {raw[0]: (*raw[1:-1], bool(raw[-1])) for raw in fetched}
        tz = self.tz
        rows = {}
        for raw in fetched:
            values = list(raw[1:])
            for i in _DATETIME_AT:
                value = values[i]
                if isinstance(value, str):  # a driver without converters
                    value = parse_datetime(value)
                if value is not None and timezone.is_naive(value):
                    value = timezone.make_aware(value, tz)
                values[i] = value
            values[self.corrupt_at] = bool(values[self.corrupt_at])
            rows[raw[0]] = tuple(values)
        return rows

    def run_ids(self) -> Iterator[str]:
        """Every row's run id."""
        with self.connection.cursor() as cursor:
            cursor.execute(f"SELECT {self.key} FROM {self.table}")  # noqa: S608 - quoted names
            while batch := cursor.fetchmany(10_000):
                for (workflow_id,) in batch:
                    yield workflow_id

    def upsert(self, rows: list[tuple[str, _Values]]) -> None:
        """Insert or overwrite rows (values as :meth:`comparable` gives them)."""
        if not rows:
            return
        # In start order: the listing indexes (started_at, and status or name with it)
        # then grow at a few places instead of at random ones, which is faster.
        at = self.started_at
        rows = sorted(rows, key=lambda row: (row[1][at] is not None, row[1][at] or 0))
        now = timezone.now()
        if not self.fast:
            objs = [
                WorkflowRun(
                    workflow_id=wid, indexed_at=now, **dict(zip(ROW_FIELDS, values, strict=True))
                )
                for wid, values in rows
            ]
            WorkflowRun.objects.bulk_create(
                objs,
                update_conflicts=True,
                unique_fields=["workflow_id"],
                update_fields=[*ROW_FIELDS, "indexed_at"],
            )
            return
        columns = [self.key, *self.columns, self.indexed_at]
        updates = ", ".join(f"{c} = excluded.{c}" for c in [*self.columns, self.indexed_at])
        sql = (
            f"INSERT INTO {self.table} ({', '.join(columns)}) "  # noqa: S608 - quoted names
            f"VALUES ({', '.join(['%s'] * len(columns))}) "
            f"ON CONFLICT ({self.key}) DO UPDATE SET {updates}"
        )
        stamp = self.connection.ops.adapt_datetimefield_value(now)
        if self.text_times:
            params = [(wid, *values, stamp) for wid, values in rows]
        else:
            adapt = self.connection.ops.adapt_datetimefield_value
            params = [
                (wid, *(adapt(v) if i in _DATETIME_AT else v for i, v in enumerate(values)), stamp)
                for wid, values in rows
            ]
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, params)


def _walk(
    store: StateStore,
    *,
    write: bool,
    prune: bool,
    progress: Progress | None,
    workers: int | None = None,
    batch_size: int = SYNC_BATCH,
) -> SyncReport:
    started = time.perf_counter()
    report = SyncReport()
    ids = store.list()
    total = report.files = len(ids)
    steps = _CachedStepCounter()
    table = _Table()
    if progress:
        progress(0, total)
    reader = None
    if isinstance(store, JSONFileStore):
        reader = _PlainReader(
            os.path.join(os.fspath(store.directory), ""),
            store.max_bytes,
            steps,
            table.text_times,
            table.tz,
        )
    if workers is None:
        parallel = total >= SYNC_PARALLEL_MIN and _can_fork_worker()
    else:
        parallel = workers > 0 and _can_fork_worker()
    corrupt_status = corrupt_fields("")["status"]
    status_at, error_at = ROW_FIELDS.index("status"), ROW_FIELDS.index("error")
    chunks = list(_chunks(ids, SYNC_READ_CHUNK))
    to_write: list[tuple[str, _Values]] = []
    corrupt_updates: list[tuple[str, dict[str, Any]]] = []
    done = 0
    for chunk, read in zip(chunks, _read_batches(reader, chunks, parallel), strict=True):
        existing = table.existing(chunk)
        for workflow_id, plain in read:
            done += 1
            if progress and done % SYNC_PROGRESS_EVERY == 0 and done < total:
                progress(done, total)
            result = plain if plain is not None else _read_slow(store, workflow_id, steps, table)
            if result is None:
                continue  # deleted since we listed it
            row = existing.get(workflow_id)
            if isinstance(result, CorruptState):
                report.corrupt[workflow_id] = str(result)
                wanted = corrupt_fields(result)
                if (
                    row is not None
                    and row[status_at] == corrupt_status
                    and row[table.corrupt_at] is True
                    and row[error_at] == wanted["error"]
                ):
                    report.unchanged += 1
                    continue
                corrupt_updates.append((workflow_id, wanted))
                if row is None:
                    report.missing_rows.append(workflow_id)
                    report.created += write
                else:
                    report.updated += write
                continue
            if row is None:
                report.missing_rows.append(workflow_id)
                report.created += write
            elif row == result:
                report.unchanged += 1
                continue
            else:
                diff = {
                    name: {"row": row[i], "file": result[i]}
                    for i, name in enumerate(ROW_FIELDS)
                    if row[i] != result[i]
                }
                report.drifted[workflow_id] = {
                    name: diff[name] for name in ("revision", "status") if name in diff
                } or {"fields": sorted(diff)}
                report.updated += write
            to_write.append((workflow_id, result))
        if not write:
            to_write, corrupt_updates = [], []
        elif len(to_write) + len(corrupt_updates) >= batch_size or chunk is chunks[-1]:
            if to_write or corrupt_updates:
                # One short transaction per batch: its files were read before it began.
                with transaction.atomic(using=table.connection.alias):
                    table.upsert(to_write)
                    _write_corrupt(corrupt_updates)
            to_write, corrupt_updates = [], []
    if progress and total:
        progress(total, total)
    file_ids = set(ids)
    # A row whose file appeared after the listing (a run started meanwhile) is not stale.
    stale = [wid for wid in table.run_ids() if wid not in file_ids and not store.exists(wid)]
    if prune and write:
        report.pruned = _prune(stale)
    else:
        report.stale_rows = stale
    report.seconds = time.perf_counter() - started
    return report


def _write_corrupt(corrupt: list[tuple[str, dict[str, Any]]]) -> None:
    now = timezone.now()
    for workflow_id, fields in corrupt:
        if not WorkflowRun.objects.filter(workflow_id=workflow_id).update(indexed_at=now, **fields):
            WorkflowRun.objects.create(workflow_id=workflow_id, workflow_name="?", **fields)


def _prune(stale: list[str]) -> int:
    pruned = 0
    for chunk in _chunks(stale, 500):
        deleted, _ = WorkflowRun.objects.filter(workflow_id__in=chunk).delete()
        pruned += deleted
    return pruned


# --- search ---------------------------------------------------------------------------

_ID_CHARS = frozenset("0123456789abcdef-")


def prefix_range(field: str, prefix: str) -> Q:
    """``field`` begins with ``prefix``, as a range a B-tree index answers.

    The range is exact under a byte-wise collation (SQLite's default, PostgreSQL's
    ``"C"``); the ``startswith`` beside it keeps the result exact under any other.
    """
    match = Q(**{f"{field}__gte": prefix}) & Q(**{f"{field}__startswith": prefix})
    if prefix and ord(prefix[-1]) < sys.maxunicode:
        match &= Q(**{f"{field}__lt": prefix[:-1] + chr(ord(prefix[-1]) + 1)})
    return match


def search_q(word: str) -> Q:
    """The runs one search word finds: by run-id prefix (a word of hex digits and
    dashes, any case) or by workflow-name prefix (as typed, or in lower case)."""
    match = Q()
    lower = word.lower()
    if set(lower) <= _ID_CHARS:
        match |= prefix_range("workflow_id", lower[:36])
    for name in dict.fromkeys((word[:128], lower[:128])):
        match |= prefix_range("workflow_name", name)
    return match


# Up to this many matches, a search fetches the matching keys first and orders only them.
SEARCH_KEYS_LIMIT = 1000


def search_runs(queryset: QuerySet[WorkflowRun], term: str) -> QuerySet[WorkflowRun]:
    """Runs matching every word of ``term`` (see ``search_q``): the admin's and the API's
    search, answered by the indexes however many runs there are.

    Asked for a page in start order, a database walks the start-time index and tests
    each row: fine when many rows match, a scan of the whole table when few do. So the
    matching keys are fetched first, without an order (the id and name indexes answer
    that), and when they are few the page is ordered from them alone.
    """
    words = term.split()
    if not words:
        return queryset
    matched = queryset
    for word in words:
        matched = matched.filter(search_q(word))
    keys = list(matched.order_by().values_list("pk", flat=True)[: SEARCH_KEYS_LIMIT + 1])
    if len(keys) <= SEARCH_KEYS_LIMIT:
        return queryset.filter(pk__in=keys)
    return matched


def sync(
    store: StateStore | None = None,
    *,
    prune: bool = False,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SyncReport:
    """Rebuild the index from the files; the file always wins.

    Every file is read; a row that differs from its file in any column is rewritten
    (whatever the revisions: a file edited by hand wins), a file without a row gets one,
    a corrupt file's row is flagged ``corrupt`` with the error (never fatal). Rows whose
    file is gone are reported, and deleted with ``prune=True``. Writes go in bulk, a
    batch of files at a time, each batch in one short transaction.
    ``progress(done, total)`` is called every thousand files and at the end.

    ``workers``: None reads and parses the files of a big store (``SYNC_PARALLEL_MIN``
    files or more) in one forked worker process while this one compares and writes,
    when there is a spare core and forking is safe (no other thread); 0 reads here;
    1 asks for the worker whatever the number of files.
    """
    from wfstate.stores import get_store

    return _walk(store or get_store(), write=True, prune=prune, progress=progress, workers=workers)


def inspect(
    store: StateStore | None = None,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> SyncReport:
    """What :func:`sync` would change, without writing anything (for ``doctor``)."""
    from wfstate.stores import get_store

    return _walk(store or get_store(), write=False, prune=False, progress=progress, workers=workers)


# --- quarantine ------------------------------------------------------------------------------


def quarantine_dir(store: StateStore) -> Path | None:
    root = getattr(store, "root", None)
    return Path(root) / "quarantine" if root is not None else None


def quarantine(store: StateStore, workflow_id: str) -> str | None:
    """Move a corrupt state file to ``<STORAGE_DIR>/quarantine/`` (never deleting it).

    The file is checked again under its write lock: a file repaired (or replaced by a
    writer) since it was found corrupt stays where it is, and None is returned.
    Returns the new path.
    """
    path_for = getattr(store, "path_for", None)
    target_dir = quarantine_dir(store)
    if path_for is None or target_dir is None:
        return None
    source: Path = path_for(workflow_id)
    with store.write_lock(workflow_id):
        try:
            store.load(workflow_id)
        except CorruptState:
            pass
        except RunNotFound:
            return None
        else:
            return None  # not corrupt (any more)
        target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = target_dir / source.name
        if target.exists():
            target = target_dir / f"{source.name}.{int(time.time() * 1000)}"
        # A rename within the storage directory; a copy if quarantine is elsewhere.
        try:
            os.replace(source, target)
        except OSError:
            shutil.move(str(source), str(target))
    return str(target)
