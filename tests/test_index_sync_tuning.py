"""What sync tunes for speed changes nothing else: the connection's page cache is given
back, the rows of a batch read by one range scan (SQLite) are those read by id, and a
first sync's listing indexes, made after its rows, are those it found, even when it was
killed half-way."""

from __future__ import annotations

import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.db import connections

from tests.helpers import REPO, child_env, make_state, rows
from wfstate import index
from wfstate.index import bulk
from wfstate.index._table import Table
from wfstate.models import WorkflowRun
from wfstate.stores import get_store

pytestmark = pytest.mark.usefixtures("wfstate_settings")


def _sqlite() -> None:
    if connections["default"].vendor != "sqlite":
        pytest.skip("SQLite's page cache, range scans and bulk load")


@pytest.mark.django_db
def test_sync_gives_the_connection_its_page_cache_back() -> None:
    _sqlite()
    get_store().save(make_state())
    with connections["default"].cursor() as cursor:
        cursor.execute("PRAGMA cache_size = -1234")
        index.sync()
        cursor.execute("PRAGMA cache_size")
        assert cursor.fetchone() == (-1234,)


@pytest.mark.django_db
def test_a_batchs_rows_by_range_are_its_rows() -> None:
    _sqlite()
    states = [make_state() for _ in range(12)]
    for state in states:
        index.index_state(state)
    by_id = {state.workflow_id: state for state in states}
    ids = sorted(by_id)
    batch = [*ids[2:5], ids[7], ids[9], "ffffffff-ffff-4fff-bfff-ffffffffffff"]  # one unindexed
    table = Table()
    got = table.existing(batch)
    assert sorted(got) == [*ids[2:5], ids[7], ids[9]]  # none of the rows between them
    for workflow_id in got:
        (row,) = table.existing([workflow_id]).values()
        assert got[workflow_id] == row
        assert row == table.comparable(index.row_fields(by_id[workflow_id]))


@pytest.mark.django_db
@pytest.mark.parametrize("workers", [0, 1])
def test_rows_without_files_are_found_wherever_their_ids_sort(
    monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Rows whose file is gone, before the first file's id, after the last, at batch
    boundaries and inside batches, serial and through the worker (batches out of order):
    each is found once, as a scan of the whole table finds them (any database)."""
    monkeypatch.setattr(bulk, "SYNC_READ_CHUNK", 3)
    store = get_store()
    states = [make_state() for _ in range(14)]
    states[0].workflow_id = "00000000-0000-4000-8000-000000000000"
    states[1].workflow_id = "ffffffff-ffff-4fff-bfff-ffffffffffff"
    for state in states:
        store.save(state)
    index.sync(store, workers=0)
    ids = sorted(state.workflow_id for state in states)
    gone = [ids[i] for i in (0, 1, 3, 4, 5, 8, 12, 13)]
    for workflow_id in gone:
        store.path_for(workflow_id).unlink()
    report = index.sync(store, workers=workers)
    assert report.stale_rows == sorted(gone)
    assert report.unchanged == len(ids) - len(gone)
    report = index.sync(store, workers=workers, prune=True)
    assert report.pruned == len(gone)
    assert sorted(WorkflowRun.objects.values_list("workflow_id", flat=True)) == sorted(
        set(ids) - set(gone)
    )


# --- a first sync into an empty table: the listing indexes made after the rows -------------


def _listing_indexes() -> dict[str, str]:
    """The model's listing indexes the table has, by name: their SQL (SQLite)."""
    return Table()._index_sql()


@pytest.mark.django_db
def test_a_first_sync_makes_the_listing_indexes_after_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Into an empty table the rows go in without the listing indexes, made at the end
    as they were (same SQL); the rows are those a sync with the indexes writes."""
    _sqlite()
    monkeypatch.setattr(bulk, "SYNC_READ_CHUNK", 4)
    monkeypatch.setattr(bulk, "SYNC_BATCH", 5)  # several batches written without them
    store = get_store()
    for _ in range(12):
        store.save(make_state())
    before = _listing_indexes()
    assert sorted(before) == sorted(index.name for index in WorkflowRun._meta.indexes)
    with_indexes = index.sync(store, workers=0)  # below BULK_LOAD_MIN: row by row
    expected = rows()
    assert with_indexes.created == 12
    WorkflowRun.objects.all().delete()

    seen: list[dict[str, str]] = []
    real_upsert = Table.upsert

    def upsert(self: Table, batch: list[Any]) -> None:
        seen.append(_listing_indexes())  # what the table has while rows go in
        real_upsert(self, batch)

    monkeypatch.setattr(Table, "upsert", upsert)
    monkeypatch.setattr(bulk, "BULK_LOAD_MIN", 10)
    report = index.sync(store, workers=0)
    assert report.created == 12
    assert len(seen) >= 2 and all(indexes == {} for indexes in seen)
    assert _listing_indexes() == before
    assert rows() == expected
    # A table with rows keeps its indexes while a sync writes to it.
    WorkflowRun.objects.exclude(workflow_id=min(expected)).delete()
    seen.clear()
    assert index.sync(store, workers=0).created == 11
    assert seen and all(indexes == before for indexes in seen)
    assert rows() == expected


@pytest.mark.django_db
def test_a_sync_that_fails_in_a_bulk_load_makes_the_indexes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _sqlite()
    store = get_store()
    for _ in range(3):
        store.save(make_state())
    before = _listing_indexes()
    monkeypatch.setattr(bulk, "BULK_LOAD_MIN", 1)

    def fail(*args: Any, **kwargs: Any) -> None:
        assert _listing_indexes() == {}
        raise KeyboardInterrupt

    monkeypatch.setattr(bulk, "_write_batch", fail)
    with pytest.raises(KeyboardInterrupt):
        index.sync(store, workers=0)
    assert _listing_indexes() == before


_KILLED_IN_A_BULK_LOAD = """
import sys

import django

django.setup()
from wfstate import index
from wfstate.index import _table, bulk

bulk.BULK_LOAD_MIN = 1
bulk.SYNC_BATCH = 2
real_upsert = _table.Table.upsert


def upsert(self, batch):
    real_upsert(self, batch)
    print("loading", flush=True)
    sys.stdin.readline()  # killed here, in the middle of the load


_table.Table.upsert = upsert
index.sync(workers=0)
"""


@pytest.mark.django_db(transaction=True)
def test_a_sync_killed_in_a_bulk_load_leaves_the_indexes_to_the_next_sync(
    wfstate_settings: dict[str, Any],
) -> None:
    """A sync process killed (SIGKILL) while it writes rows without the listing indexes
    leaves them out; nothing but a sync that writes makes them again (``inspect`` does
    not), with the SQL they had, and every file indexed."""
    _sqlite()
    storage = Path(wfstate_settings["STORAGE_DIR"])
    store = get_store()
    ids = []
    for _ in range(6):
        state = make_state()
        store.save(state)
        ids.append(state.workflow_id)
    before = _listing_indexes()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_IN_A_BULK_LOAD],
        cwd=REPO,
        env=child_env(storage),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        # Never a hang: the child says when the first batch is written (the second not).
        ready, _, _ = select.select([child.stdout], [], [], 120)
        assert ready, "the sync process never reached its bulk load"
        line = child.stdout.readline()
        assert line == "loading\n", child.stderr.read() if child.stderr else ""
        assert _listing_indexes() == {}
    finally:
        child.kill()
        child.wait(timeout=30)
    assert _listing_indexes() == {}
    index.inspect(store, workers=0)
    assert _listing_indexes() == {}
    report = index.sync(store, workers=0)
    assert _listing_indexes() == before
    assert sorted(rows()) == sorted(ids)
    assert report.created + report.updated + report.unchanged == len(ids)
