"""The index: projecting state files into ``WorkflowRun`` rows (SPEC §7).

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

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connections, models, router, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from wfstate.exceptions import CorruptState, RunNotFound
from wfstate.models import RunStatusChoices, WorkflowRun
from wfstate.state import WorkflowState, parse_time
from wfstate.stores.base import StateStore
from wfstate.stores.jsonfile import parse_state

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

# How many files a sync reads, compares and writes at a time.
SYNC_CHUNK = 900  # under SQLite's historical 999 bound parameters

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


def error_summary(state: WorkflowState) -> str:
    """The run's error, else the first failed step's, cut to a summary."""
    if state.error:
        return _summary(state.error)
    for step in state.states.values():
        if step.status == "failed" and step.error:
            return _summary(f"{step.name}: {step.error}")
    return ""


_DONE = frozenset({"completed", "failed", "skipped"})
_FINAL = frozenset({"completed", "failed", "cancelled"})


def row_fields(state: WorkflowState, step_count: StepCounter | None = None) -> dict[str, Any]:
    """The columns of a run's row, computed from its state alone.

    ``steps_total`` is the definition's number of non-terminal states while the run is
    live (at least the states the run reached), and the states the run reached once it
    is final, so a finished run's progress bar reads what it did, not what it skipped.
    (Written for speed: ``sync`` calls it for every file.)
    """
    steps = state.states
    reached = len(steps)
    done = sum(1 for step in steps.values() if step.status in _DONE)
    status = str(state.status)
    if status in _FINAL:
        total = reached
    else:
        total = max((step_count or definition_step_count)(state.workflow_name) or 0, reached)
    started = parse_time(state.started_at)
    updated = parse_time(state.updated_at)
    completed = parse_time(state.completed_at)
    end = completed or updated
    duration = int((end - started).total_seconds() * 1000) if started and end else None
    return {
        "workflow_name": state.workflow_name[:128],
        "workflow_version": (state.workflow_version or "")[:64],
        "status": status,
        "current_state": (state.current_state or "")[:128],
        "started_at": started,
        "updated_at": updated,
        "completed_at": completed,
        "duration_ms": duration,
        "steps_done": done,
        "steps_total": max(total, done),
        "revision": state.revision,
        "error": error_summary(state),
        "corrupt": False,
    }


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


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load(store: StateStore, workflow_id: str) -> WorkflowState:
    """``store.load()``, with a fast path for the file store's plain, healthy files.

    One ``os.read`` of the file's size (no symlink followed, size-limited like the
    store's own reader); anything unusual (missing, a link, too big, unreadable) goes
    through ``store.load()``, which raises the precise error.

    Raises:
        RunNotFound, CorruptState, StorageError.
    """
    path_for = getattr(store, "path_for", None)
    max_bytes = getattr(store, "max_bytes", None)
    if path_for is None or max_bytes is None:
        return store.load(workflow_id)
    path = path_for(workflow_id)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return store.load(workflow_id)
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            return store.load(workflow_id)
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            data = os.read(fd, min(remaining, max(size + 1, 65536)))
            if not data:
                break
            chunks.append(data)
            remaining -= len(data)
    except OSError:
        return store.load(workflow_id)
    finally:
        os.close(fd)
    if remaining <= 0:  # grew past the limit while we read it
        return store.load(workflow_id)
    return parse_state(b"".join(chunks), path, workflow_id)


def _read_chunk(
    store: StateStore, ids: Iterable[str], steps: StepCounter
) -> Iterator[tuple[str, dict[str, Any] | CorruptState]]:
    for workflow_id in ids:
        try:
            state = _load(store, workflow_id)
        except RunNotFound:
            continue  # deleted since we listed it
        except CorruptState as exc:
            yield workflow_id, exc
            continue
        yield workflow_id, row_fields(state, steps)


class _Table:
    """Raw, set-based reads and writes of the index table for ``sync``.

    The ORM's ``bulk_create`` spends most of its time preparing values field by field;
    here a chunk is one ``SELECT ... IN`` and one ``executemany`` upsert (``INSERT ...
    ON CONFLICT (workflow_id) DO UPDATE``, which SQLite and PostgreSQL share). Other
    backends take the ORM's ``bulk_create(update_conflicts=True)``.
    """

    def __init__(self) -> None:
        self.connection = connections[router.db_for_write(WorkflowRun)]
        self.fast = self.connection.vendor in ("sqlite", "postgresql")
        meta = WorkflowRun._meta
        quote = self.connection.ops.quote_name
        self.table = quote(meta.db_table)
        self.key = quote(self._column("workflow_id"))
        self.columns = [quote(self._column(name)) for name in ROW_FIELDS]
        self.indexed_at = quote(self._column("indexed_at"))
        self.corrupt_at = ROW_FIELDS.index("corrupt")
        self.datetimes = {
            i
            for i, name in enumerate(ROW_FIELDS)
            if isinstance(meta.get_field(name), models.DateTimeField)
        }

    @staticmethod
    def _column(name: str) -> str:
        field = WorkflowRun._meta.get_field(name)
        assert isinstance(field, models.Field)
        return str(field.column)

    def adapt(self, fields: dict[str, Any]) -> tuple[Any, ...]:
        """The row's values as the database driver takes them."""
        adapt = self.connection.ops.adapt_datetimefield_value
        return tuple(
            adapt(fields[name]) if i in self.datetimes else fields[name]
            for i, name in enumerate(ROW_FIELDS)
        )

    def existing(self, ids: list[str]) -> dict[str, tuple[Any, ...]]:
        """The chunk's rows, as comparable to ``row_fields()`` values (aware datetimes)."""
        placeholders = ", ".join(["%s"] * len(ids))
        sql = (
            f"SELECT {self.key}, {', '.join(self.columns)} FROM {self.table} "  # noqa: S608 - quoted names, bound values
            f"WHERE {self.key} IN ({placeholders})"
        )
        with self.connection.cursor() as cursor:
            cursor.execute(sql, ids)
            fetched = cursor.fetchall()
        tz = self.connection.timezone
        rows = {}
        for raw in fetched:
            values = list(raw[1:])
            for i in self.datetimes:
                value = values[i]
                if isinstance(value, str):  # a driver without converters
                    value = parse_datetime(value)
                if value is not None and timezone.is_naive(value):
                    value = timezone.make_aware(value, tz)
                values[i] = value
            values[self.corrupt_at] = bool(values[self.corrupt_at])
            rows[raw[0]] = tuple(values)
        return rows

    def upsert(self, rows: list[tuple[str, dict[str, Any], tuple[Any, ...]]]) -> None:
        if not rows:
            return
        now = timezone.now()
        if not self.fast:
            objs = [
                WorkflowRun(workflow_id=wid, indexed_at=now, **fields) for wid, fields, _ in rows
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
        with self.connection.cursor() as cursor:
            cursor.executemany(sql, [(wid, *values, stamp) for wid, _, values in rows])


def _walk(
    store: StateStore,
    *,
    write: bool,
    prune: bool,
    progress: Progress | None,
    chunk_size: int = SYNC_CHUNK,
) -> SyncReport:
    started = time.perf_counter()
    report = SyncReport()
    ids = store.list()
    report.files = len(ids)
    steps = _CachedStepCounter()
    table = _Table()
    done = 0
    if progress:
        progress(0, report.files)
    for chunk in _chunks(ids, chunk_size):
        existing = table.existing(chunk)
        to_write: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = []
        corrupt_updates: list[tuple[str, dict[str, Any]]] = []
        for workflow_id, result in _read_chunk(store, chunk, steps):
            row = existing.get(workflow_id)
            if isinstance(result, CorruptState):
                report.corrupt[workflow_id] = str(result)
                wanted = corrupt_fields(result)
                if row is not None and all(
                    row[ROW_FIELDS.index(name)] == value for name, value in wanted.items()
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
            values = tuple(result[name] for name in ROW_FIELDS)
            if row is None:
                report.missing_rows.append(workflow_id)
                report.created += write
            elif row == values:
                report.unchanged += 1
                continue
            else:
                diff = {
                    name: {"row": row[i], "file": values[i]}
                    for i, name in enumerate(ROW_FIELDS)
                    if row[i] != values[i]
                }
                report.drifted[workflow_id] = {
                    name: diff[name] for name in ("revision", "status") if name in diff
                } or {"fields": sorted(diff)}
                report.updated += write
            to_write.append((workflow_id, result, table.adapt(result)))
        if write:
            with transaction.atomic(using=table.connection.alias):
                table.upsert(to_write)
                _write_corrupt(corrupt_updates)
        done += len(chunk)
        if progress:
            progress(done, report.files)
    stale = _stale_rows(set(ids))
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


def _stale_rows(file_ids: set[str]) -> list[str]:
    return [
        workflow_id
        for workflow_id in WorkflowRun.objects.values_list("workflow_id", flat=True).iterator(
            chunk_size=5000
        )
        if workflow_id not in file_ids
    ]


def _prune(stale: list[str]) -> int:
    pruned = 0
    for chunk in _chunks(stale, 500):
        deleted, _ = WorkflowRun.objects.filter(workflow_id__in=chunk).delete()
        pruned += deleted
    return pruned


def sync(
    store: StateStore | None = None, *, prune: bool = False, progress: Progress | None = None
) -> SyncReport:
    """Rebuild the index from the files; the file always wins.

    Every file is read; a row that differs from its file in any column is rewritten
    (whatever the revisions: a file edited by hand wins), a file without a row gets one,
    a corrupt file's row is flagged ``corrupt`` with the error (never fatal). Rows whose
    file is gone are reported, and deleted with ``prune=True``. Writes go in bulk, a
    chunk of files at a time. ``progress(done, total)`` is called after each chunk.
    """
    from wfstate.stores import get_store

    return _walk(store or get_store(), write=True, prune=prune, progress=progress)


def inspect(store: StateStore | None = None, *, progress: Progress | None = None) -> SyncReport:
    """What :func:`sync` would change, without writing anything (for ``doctor``)."""
    from wfstate.stores import get_store

    return _walk(store or get_store(), write=False, prune=False, progress=progress)


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
