"""Searching the index: prefixes as ranges a B-tree index answers (admin and API)."""

from __future__ import annotations

import sys

from django.db.models import Q, QuerySet

from wfstate.models import WorkflowRun

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
