"""The list's fast paths return what the plain queries return, row for row, in order.

``search_runs`` turns each name prefix into the workflow names it stands for (one loose
index scan) and ``date_span`` reads the first and last start with two ordered subqueries;
both are compared here with the plain way (the prefix ranges of ``search_q``; ``MIN`` and
``MAX``), on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.models import Max, Min
from django.test import Client
from django.urls import reverse

from wfstate.admin_changelist import date_span
from wfstate.index import search
from wfstate.index.search import search_q, search_runs, workflow_names
from wfstate.models import WorkflowRun

pytestmark = pytest.mark.django_db

NAMES = [
    "release",
    "release-nightly",
    "releases",
    "Release",
    "RELEASE",
    "report",
    "deploy",
    "dead-letter",  # hex letters: an id prefix and a name prefix at once
    "backup",
    "a_b",  # LIKE's wildcards are plain characters in a prefix
    "a%b",
    "axb",
    "émile",
    "zz",
    *[f"many{n:02d}" for n in range(30)],  # more names than SEARCH_NAMES_LIMIT
]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def runs() -> None:
    rows = []
    for i in range(600):
        rows.append(
            WorkflowRun(
                workflow_id=str(
                    uuid.UUID(bytes=hashlib.blake2b(bytes([i % 256, i // 256])).digest()[:16])
                ),
                workflow_name=NAMES[i % len(NAMES)],
                status=("completed", "failed", "running")[i % 3],
                # Ties on the start time (the id breaks them) and runs without one.
                started_at=None if i % 50 == 7 else T0 + timedelta(minutes=i // 3),
            )
        )
    WorkflowRun.objects.bulk_create(rows)


def plain_search(term: str) -> list[str]:
    """The search as ranges, without names or keys: the reference."""
    queryset = WorkflowRun.objects.all()
    for word in term.split():
        queryset = queryset.filter(search_q(word))
    return list(queryset.order_by("-started_at", "-id").values_list("workflow_id", flat=True))


TERMS = [
    "release",
    "releas",
    "Release",
    "RELEASE",
    "rel",
    "re",
    "r",
    "de",
    "dead",
    "d",
    "a_",
    "a%",
    "a",
    "é",
    "many",
    "many1",
    "zz",
    "zzz",
    "release 0",
    "rel release-",
    "dead de",
    "0",
    "8",
]


@pytest.mark.usefixtures("runs")
@pytest.mark.parametrize("term", TERMS)
def test_search_by_names_finds_what_the_ranges_find(term: str) -> None:
    expected = plain_search(term)
    found = search_runs(WorkflowRun.objects.all(), term)
    assert list(found.order_by("-started_at", "-id").values_list("workflow_id", flat=True)) == (
        expected
    )
    # And the same through a filtered list (the admin's and the API's filters come first).
    failed = WorkflowRun.objects.filter(status="failed")
    assert list(
        search_runs(failed, term).order_by("-started_at", "-id").values_list("pk", flat=True)
    ) == list(
        WorkflowRun.objects.filter(workflow_id__in=expected, status="failed")
        .order_by("-started_at", "-id")
        .values_list("pk", flat=True)
    )


@pytest.mark.usefixtures("runs")
def test_the_comparison_can_fail() -> None:
    """The control: the terms find runs, different runs, so a wrong path would show."""
    found = {term: tuple(plain_search(term)) for term in TERMS}
    assert [t for t in TERMS if not found[t]] == ["zzz"]
    assert len({found[t] for t in ("rel release-", "release", "r", "Release", "RELEASE")}) == 5
    assert found["dead"] and found["0"] and found["a_"] != found["a"]


@pytest.mark.usefixtures("runs")
def test_workflow_names_is_the_names_of_each_prefix() -> None:
    names = workflow_names(["release", "rel", "Rel", "a_", "zzz", "é"], connection.alias)
    assert names == {
        "release": ["release", "release-nightly", "releases"],
        "rel": ["release", "release-nightly", "releases"],
        "Rel": ["Release"],
        "a_": ["a_b"],
        "zzz": [],
        "é": ["émile"],
    }
    # A prefix that stands for too many names: the search keeps its range.
    assert workflow_names(["many"], connection.alias) is None
    assert len(workflow_names(["many1"], connection.alias) or {}) == 1


@pytest.mark.usefixtures("runs")
def test_a_search_by_name_is_read_in_list_order_from_the_index() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's")
    queryset = search_runs(WorkflowRun.objects.all(), "release-")  # one name
    sql, params = queryset.order_by("-started_at", "-id")[:50].query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
        plan = " | ".join(str(row[-1]) for row in cursor.fetchall())
    assert "wfstate_run_name_order (workflow_name=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_the_names_limit_is_what_the_fallback_is_judged_on() -> None:
    assert search.SEARCH_NAMES_LIMIT < 30  # the fixture's "many" names exceed it


@pytest.mark.usefixtures("runs")
@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"status": "failed"},
        {"workflow_name": "deploy"},
        {"workflow_name": "nobody"},
        {"started_at__isnull": True},
        {"started_at__gte": T0 + timedelta(minutes=50), "started_at__lt": T0 + timedelta(hours=2)},
    ],
)
def test_date_span_is_min_and_max(filters: dict[str, object]) -> None:
    queryset = WorkflowRun.objects.filter(**filters).order_by("-started_at", "-id")
    expected = queryset.aggregate(first=Min("started_at"), last=Max("started_at"))
    assert date_span(queryset, "started_at") == (expected["first"], expected["last"])
    if filters in ({}, {"status": "failed"}):
        assert expected["first"] is not None and expected["first"] != expected["last"]


def test_date_span_of_an_empty_table() -> None:
    assert date_span(WorkflowRun.objects.all(), "started_at") == (None, None)


@pytest.mark.usefixtures("runs", "wfstate_settings")
@pytest.mark.parametrize("term", ["release", "r", "dead", "many", "zzz", "8"])
def test_the_api_and_the_admin_list_what_the_ranges_find(admin_client: Client, term: str) -> None:
    expected = plain_search(term)
    body = admin_client.get("/api/wfstate/runs/", {"search": term, "page_size": 500}).json()
    assert body["count"] == len(expected)
    assert [run["workflow_id"] for run in body["results"]] == expected
    html = admin_client.get(
        reverse("admin:wfstate_workflowrun_changelist"), {"q": term}
    ).content.decode()
    assert re.findall(r'<code class="wf-id" title="([^"]+)"', html) == expected[:50]
    assert f"{len(expected)} result" in html
