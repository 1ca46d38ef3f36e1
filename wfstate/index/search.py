"""Searching the index: prefixes as ranges a B-tree index answers (admin and API)."""

from __future__ import annotations

import sys

from django.db import connections
from django.db.models import Q, QuerySet

from wfstate.models import WorkflowRun

_ID_CHARS = frozenset("0123456789abcdef-")


def _upper_bound(prefix: str) -> str | None:
    """The least string above every string that begins with ``prefix`` (binary order)."""
    if prefix and ord(prefix[-1]) < sys.maxunicode:
        return prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return None


def prefix_range(field: str, prefix: str) -> Q:
    """``field`` begins with ``prefix``, as a range a B-tree index answers.

    The range is exact under a byte-wise collation (SQLite's default, PostgreSQL's
    ``"C"``); the ``startswith`` beside it keeps the result exact under any other.
    """
    match = Q(**{f"{field}__gte": prefix}) & Q(**{f"{field}__startswith": prefix})
    upper = _upper_bound(prefix)
    if upper is not None:
        match &= Q(**{f"{field}__lt": upper})
    return match


def _name_prefixes(word: str) -> list[str]:
    """The workflow-name prefixes one search word stands for: as typed, or in lower case."""
    return list(dict.fromkeys((word[:128], word.lower()[:128])))


def search_q(word: str, names: dict[str, list[str]] | None = None) -> Q:
    """The runs one search word finds: by run-id prefix (a word of hex digits and
    dashes, any case) or by workflow-name prefix (as typed, or in lower case).

    With ``names`` (each name prefix's workflow names, from ``workflow_names``), the
    name part is those names (an equality an index returns in start order) instead of
    the range: the same runs.
    """
    match = Q()
    lower = word.lower()
    if set(lower) <= _ID_CHARS:
        match |= prefix_range("workflow_id", lower[:36])
    for prefix in _name_prefixes(word):
        if names is None:
            match |= prefix_range("workflow_name", prefix)
        elif len(names[prefix]) == 1:
            match |= Q(workflow_name=names[prefix][0])
        else:  # none (an IN () that matches nothing) or several
            match |= Q(workflow_name__in=names[prefix])
    return match


# How many workflow names a name prefix may stand for before a search uses its range.
SEARCH_NAMES_LIMIT = 20


def workflow_names(prefixes: list[str], using: str) -> dict[str, list[str]] | None:
    """The workflow names in the index that begin with each prefix, in ONE query; None if
    a prefix begins more than ``SEARCH_NAMES_LIMIT`` of them (or has no upper bound).

    A loose index scan (a recursive CTE: each step is the least name above the last
    one, one seek in the name index), so it costs the number of names, not of runs;
    ``SELECT DISTINCT`` would read every run of the range. Raw SQL because the ORM has
    no recursive CTE; the SQL is the same on SQLite and PostgreSQL.
    """
    bounds = [(prefix, _upper_bound(prefix)) for prefix in prefixes]
    if not bounds or any(upper is None for _, upper in bounds):
        return None
    connection = connections[using]
    qn = connection.ops.quote_name
    table, column = qn(WorkflowRun._meta.db_table), qn("workflow_name")
    ctes, selects, params = [], [], []
    for i, (prefix, upper) in enumerate(bounds):
        ctes.append(
            f"n{i}(name, k) AS ("  # noqa: S608 - quoted names, bound values
            f"SELECT MIN({column}), 0 FROM {table} WHERE {column} >= %s AND {column} < %s "
            f"UNION ALL SELECT (SELECT MIN({column}) FROM {table} "
            f"WHERE {column} > n{i}.name AND {column} < %s), n{i}.k + 1 "
            f"FROM n{i} WHERE n{i}.name IS NOT NULL AND n{i}.k < %s)"
        )
        params += [prefix, upper, upper, SEARCH_NAMES_LIMIT]
        selects.append(f"SELECT {i}, name FROM n{i} WHERE name IS NOT NULL")  # noqa: S608
    sql = f"WITH RECURSIVE {', '.join(ctes)} {' UNION ALL '.join(selects)}"
    found: dict[str, list[str]] = {prefix: [] for prefix in prefixes}
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for i, name in cursor.fetchall():
            found[prefixes[i]].append(name)
    if any(len(names) > SEARCH_NAMES_LIMIT for names in found.values()):
        return None
    # Under a collation that is not byte-wise, the range may hold names that do not
    # begin with the prefix: the same test as prefix_range's startswith.
    return {prefix: [n for n in names if n.startswith(prefix)] for prefix, names in found.items()}


# Up to this many matches, a search fetches the matching keys first and orders only them.
SEARCH_KEYS_LIMIT = 1000


def search_runs(queryset: QuerySet[WorkflowRun], term: str) -> QuerySet[WorkflowRun]:
    """Runs matching every word of ``term`` (see ``search_q``): the admin's and the API's
    search, answered by the indexes however many runs there are.

    First the workflow names each word's name prefix stands for (one query, see
    ``workflow_names``): a name is an equality that the (name, start) index returns in
    the list's order, so a page of a search that matches a whole workflow reads one page
    of that index, however many runs the workflow has; a range of names would have to
    be sorted first.

    When a prefix stands for too many names, the ranges are searched: asked for a page
    in start order, a database walks the start-time index and tests each row, fine when
    many rows match, a scan of the whole table when few do. So the matching keys are
    fetched first, without an order (the id and name indexes answer that), and when
    they are few the page is ordered from them alone.
    """
    words = term.split()
    if not words:
        return queryset
    prefixes = list(dict.fromkeys(p for word in words for p in _name_prefixes(word)))
    names = workflow_names(prefixes, queryset.db)
    if names is not None:
        for word in words:
            queryset = queryset.filter(search_q(word, names))
        return queryset
    matched = queryset
    for word in words:
        matched = matched.filter(search_q(word))
    keys = list(matched.order_by().values_list("pk", flat=True)[: SEARCH_KEYS_LIMIT + 1])
    if len(keys) <= SEARCH_KEYS_LIMIT:
        return queryset.filter(pk__in=keys)
    return matched
