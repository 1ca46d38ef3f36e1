"""The changelist's queries do not grow with the table: 100 runs or 100,000, same count."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from wfstate.models import WorkflowRun

pytestmark = pytest.mark.django_db

STATUSES = ("completed", "failed", "running", "cancelled", "pending", "corrupt")
NAMES = ("release", "deploy", "backup", "report", "demo")
T0 = datetime(2026, 1, 1, tzinfo=UTC)

PAGES = {
    "first page": {},
    "filtered": {"status__exact": "running"},
    "filtered by name and status": {"workflow_name": "deploy", "status__exact": "failed"},
    "search by name": {"q": "backup"},
    "search by id prefix": {"q": "0000"},
    "year": {"started_at__year": "2026"},
    "day": {"started_at__year": "2026", "started_at__month": "3", "started_at__day": "4"},
    "sorted by duration": {"o": "6"},
}


def add_runs(start: int, stop: int) -> None:
    rows = []
    for i in range(start, stop):
        started = T0 + timedelta(minutes=7 * i)
        rows.append(
            WorkflowRun(
                workflow_id=str(uuid.UUID(int=i, version=4)),
                workflow_name=NAMES[i % len(NAMES)],
                workflow_version="1",
                status=STATUSES[i % len(STATUSES)],
                current_state="build",
                started_at=started,
                updated_at=started + timedelta(seconds=i % 300),
                duration_ms=(i % 300) * 1000,
                steps_done=i % 5,
                steps_total=5,
                revision=1 + i % 9,
                corrupt=STATUSES[i % len(STATUSES)] == "corrupt",
            )
        )
    WorkflowRun.objects.bulk_create(rows, batch_size=5000)


def count_queries(client: Client) -> dict[str, int]:
    counts = {}
    for name, params in PAGES.items():
        with CaptureQueriesContext(connection) as ctx:
            response = client.get(reverse("admin:wfstate_workflowrun_changelist"), params)
        assert response.status_code == 200, name
        counts[name] = len(ctx.captured_queries)
    return counts


@pytest.mark.slow
def test_changelist_queries_are_constant_from_100_to_100000_runs(admin_client: Client) -> None:
    add_runs(0, 100)
    admin_client.get(reverse("admin:wfstate_workflowrun_changelist"))  # session warm-up
    small = count_queries(admin_client)
    add_runs(100, 100_000)
    assert WorkflowRun.objects.count() == 100_000
    large = count_queries(admin_client)
    assert large == small, (small, large)
    # And few of them: session, user, count, page, the name filter's values, the date range.
    assert max(large.values()) <= 6, large
    # Still a full page of runs at 100,000 rows.
    html = admin_client.get(reverse("admin:wfstate_workflowrun_changelist")).content.decode()
    assert html.count('class="wf-progress"') == 50


def test_searches_are_answered_from_indexes() -> None:
    """Every search word is an index range: no plan scans the table (SQLite)."""
    from wfstate.index import search_q

    if connection.vendor != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    add_runs(0, 500)
    for words in (["0000"], ["backup"], ["Backup"], ["deploy", "0000"], [str(uuid.UUID(int=7))]):
        queryset = WorkflowRun.objects.all()
        for word in words:
            queryset = queryset.filter(search_q(word))
        sql, params = queryset.order_by("-started_at", "-id")[:50].query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
        assert "USING INDEX" in plan, (words, plan)
        assert "SCAN wfstate_workflowrun" not in plan, (words, plan)
