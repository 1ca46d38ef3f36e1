"""Rebuilding the index from the files in bulk (``sync``), or checking it (``inspect``)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.db import DataError, IntegrityError, transaction

from wfstate.exceptions import CorruptState, RunNotFound
from wfstate.index._table import Table, Values, chunks
from wfstate.index.projection import (
    ROW_FIELDS,
    CachedStepCounter,
    StepCounter,
    corrupt_fields,
    row_fields,
)
from wfstate.index.reader import PlainReader, can_fork_worker, read_batches
from wfstate.index.rows import CORRUPT_DEFAULTS, PROJECTION_ERRORS, write_row
from wfstate.models import WorkflowRun
from wfstate.stores.base import StateStore

Progress = Callable[[int, int], None]

logger = logging.getLogger("wfstate.index")


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
SYNC_READ_CHUNK = 1000
# How often (in files) a sync reports its progress.
SYNC_PROGRESS_EVERY = 1000
# From how many files a sync into an empty index table writes its rows without the
# listing indexes and makes them at the end (SQLite; see Table.bulk_load).
BULK_LOAD_MIN = 10_000
# From how many files a sync reads and parses them in a worker process while this one
# compares and writes (forking a worker costs a fraction of a second).
SYNC_PARALLEL_MIN = 10_000


def _read_slow(
    store: StateStore, workflow_id: str, steps: StepCounter, table: Table
) -> Values | CorruptState | None:
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
    except PROJECTION_ERRORS as exc:
        return CorruptState(f"run {workflow_id} is not a valid state: {exc}")


def _walk(
    store: StateStore,
    *,
    write: bool,
    prune: bool,
    progress: Progress | None,
    workers: int | None = None,
) -> SyncReport:
    started = time.perf_counter()
    report = SyncReport()
    ids = store.list()
    ids.sort()  # sorted already (store.list()'s contract): a batch is a range of ids
    report.files = len(ids)
    table = Table()
    if write:
        table.restore_listing_indexes()  # what a sync killed in a bulk load left out
    # Into an empty table (a first sync, or one after the database was lost), many rows
    # go in faster without the listing indexes, made over them at the end (SQLite).
    with (
        table.large_cache() if write else contextlib.nullcontext(),
        table.bulk_load(write and report.files >= BULK_LOAD_MIN),
    ):
        _walk_files(
            store,
            ids,
            table,
            CachedStepCounter(),
            write=write,
            prune=prune,
            progress=progress,
            workers=workers,
            report=report,
        )
    report.seconds = time.perf_counter() - started
    return report


def _walk_files(
    store: StateStore,
    ids: list[str],
    table: Table,
    steps: CachedStepCounter,
    *,
    write: bool,
    prune: bool,
    progress: Progress | None,
    workers: int | None,
    report: SyncReport,
) -> None:
    total = report.files
    if progress:
        progress(0, total)
    reader = None
    read_raw = store.raw_reader()
    if read_raw is not None:
        reader = PlainReader(read_raw, steps, table.text_times, table.tz)
    if workers is None:
        parallel = total >= SYNC_PARALLEL_MIN and can_fork_worker()
    else:
        parallel = workers > 0 and can_fork_worker()
    corrupt_status = corrupt_fields("")["status"]
    status_at, error_at = ROW_FIELDS.index("status"), ROW_FIELDS.index("error")
    # A small first batch: the worker's first result, which this process waits for,
    # comes sooner.
    first = max(1, SYNC_READ_CHUNK // 4) if parallel else SYNC_READ_CHUNK
    batches = [ids[:first], *chunks(ids[first:], SYNC_READ_CHUNK)] if ids else []
    # On SQLite each batch's rows are read as one range of ids (Table.existing): laid end
    # to end (each from the last id of the batch before it, the last one open-ended),
    # the ranges cover every row once, so the rows that have no file turn up with them
    # and the table is not scanned again at the end to find them.
    tiled = table.text_times and bool(batches)
    ranges: dict[str, str | None] = {}  # a batch's first id -> the id its range is after
    low = None
    for batch in batches:
        ranges[batch[0]], low = low, batch[-1]
    last_batch = batches[-1][0] if batches else None
    unlisted: list[str] = []
    to_write: list[tuple[str, Values]] = []
    corrupt_updates: list[tuple[str, dict[str, Any]]] = []
    done = 0
    left = len(batches)
    for chunk, read in read_batches(reader, batches, parallel):
        left -= 1
        if tiled:
            existing = table.existing(
                chunk, after=ranges[chunk[0]], last=chunk[0] == last_batch, unlisted=unlisted
            )
        else:
            existing = table.existing(chunk)  # by id: not SQLite
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
        pending = len(to_write) + len(corrupt_updates)
        if not write:
            to_write, corrupt_updates = [], []
        elif (
            pending >= SYNC_BATCH
            or not left
            # While the worker reads the last batches, write what is pending once it is
            # as many rows as are still to come (so the last write, the one nothing
            # overlaps, is a read batch or two, not a whole write batch).
            or (parallel and pending >= total - done)
        ):
            if to_write or corrupt_updates:
                _write_batch(table, to_write, corrupt_updates, report)
            to_write, corrupt_updates = [], []
    if progress and total:
        progress(total, total)
    if tiled:
        candidates = unlisted
    else:
        file_ids = set(ids)
        candidates = [wid for wid in table.run_ids() if wid not in file_ids]
    # A row whose file appeared after the listing (a run started meanwhile) is not stale.
    stale = sorted(wid for wid in candidates if not store.exists(wid))
    if prune and write:
        report.pruned = _prune(stale)
    else:
        report.stale_rows = stale


# What a database raises for one value it cannot hold (a NUL in text on PostgreSQL, an
# integer out of range): the row's own problem, unlike a lost connection.
_VALUE_ERRORS = (DataError, IntegrityError, OverflowError, ValueError)


def _write_batch(
    table: Table,
    to_write: list[tuple[str, Values]],
    corrupt: list[tuple[str, dict[str, Any]]],
    report: SyncReport,
) -> None:
    """Write a batch in one short transaction (its files were read before it began).

    Should the database refuse a value the projection let through, the batch is
    written again row by row, and each refused file is reported corrupt with the
    database's error: one odd file never leaves the others unindexed.
    """
    alias = table.connection.alias
    try:
        with transaction.atomic(using=alias):
            table.upsert(to_write)
            _write_corrupt(corrupt)
        return
    except _VALUE_ERRORS:
        logger.warning("sync: the database refused a batch; writing it row by row", exc_info=True)
    corrupt = list(corrupt)
    for workflow_id, values in to_write:
        try:
            with transaction.atomic(using=alias):
                table.upsert([(workflow_id, values)])
        except _VALUE_ERRORS as exc:
            error = f"run {workflow_id} cannot be indexed: {exc}"
            report.corrupt[workflow_id] = error
            corrupt.append((workflow_id, corrupt_fields(error)))
    with transaction.atomic(using=alias):
        _write_corrupt(corrupt)


def _write_corrupt(corrupt: list[tuple[str, dict[str, Any]]]) -> None:
    for workflow_id, fields in corrupt:
        write_row(workflow_id, fields, defaults=CORRUPT_DEFAULTS)


def _prune(stale: list[str]) -> int:
    pruned = 0
    for chunk in chunks(stale, 500):
        deleted, _ = WorkflowRun.objects.filter(workflow_id__in=chunk).delete()
        pruned += deleted
    return pruned


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
