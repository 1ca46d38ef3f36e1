"""What sync tunes for speed changes nothing else: the connection's page cache is given
back, and the rows of a batch read by one range scan (SQLite) are those read by id."""

from __future__ import annotations

import pytest
from django.db import connections

from tests.helpers import make_state
from wfstate import index
from wfstate.index import bulk
from wfstate.index._table import Table
from wfstate.models import WorkflowRun
from wfstate.stores import get_store

pytestmark = pytest.mark.usefixtures("wfstate_settings")


def _sqlite() -> None:
    if connections["default"].vendor != "sqlite":
        pytest.skip("SQLite's page cache and range scan")


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
