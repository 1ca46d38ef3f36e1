"""The runs changelist's parts: a changelist whose links and date drill-down use the run
id, a paginator that never counts a whole big table, the workflow filter from the
definitions, and the registry's invalid files shown above the list (docs/admin.md).
"""

from __future__ import annotations

import calendar
import datetime
from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db import models
from django.db.models import QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.functional import cached_property
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from wfstate.exceptions import WFStateError
from wfstate.models import WorkflowRun


class WorkflowRunChangeList(ChangeList):
    """Links by run id (stable across index rebuilds), and a date hierarchy that stays
    cheap on big tables.

    Django's date hierarchy lists the years/months/days that hold rows with a
    ``SELECT DISTINCT`` over a truncated date: a function call per row, so its cost
    grows with the table. Here each level costs one query for the first and the last
    start (``date_span``: two reads of an index), and offers every period between the
    first and the last run (a period without runs shows an empty list).
    """

    def url_for_result(self, result: models.Model) -> str:
        assert isinstance(result, WorkflowRun)
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(result.workflow_id,),
            current_app=self.model_admin.admin_site.name,
        )

    def wf_date_hierarchy(self) -> dict[str, Any]:
        field_name = self.date_hierarchy
        if not field_name:
            return {"show": False}
        params = {k: v[-1] if isinstance(v, list) else v for k, v in self.params.items()}
        year = params.get(f"{field_name}__year")
        month = params.get(f"{field_name}__month")
        day = params.get(f"{field_name}__day")

        def link(filters: dict[str, Any]) -> str:
            return self.get_query_string(filters, [f"{field_name}__"])

        year_f, month_f, day_f = (f"{field_name}__{p}" for p in ("year", "month", "day"))
        if year and month and day:
            date = datetime.date(int(year), int(month), int(day))
            return {
                "show": True,
                "back": {
                    "link": link({year_f: year, month_f: month}),
                    "title": capfirst(formats.date_format(date, "YEAR_MONTH_FORMAT")),
                },
                "choices": [{"title": capfirst(formats.date_format(date, "MONTH_DAY_FORMAT"))}],
            }
        first, last = date_span(self.queryset, field_name)
        if first is None or last is None:
            return {"show": False}
        first, last = timezone.localtime(first), timezone.localtime(last)
        if not year and first.year == last.year:
            year = str(first.year)
            if first.month == last.month:
                month = str(first.month)
        if year and month:
            y, m = int(year), int(month)
            lo = first.day if (first.year, first.month) == (y, m) else 1
            hi = last.day if (last.year, last.month) == (y, m) else calendar.monthrange(y, m)[1]
            return {
                "show": True,
                "back": {"link": link({year_f: year}), "title": str(year)},
                "choices": [
                    {
                        "link": link({year_f: year, month_f: month, day_f: d}),
                        "title": capfirst(
                            formats.date_format(datetime.date(y, m, d), "MONTH_DAY_FORMAT")
                        ),
                    }
                    for d in range(lo, hi + 1)
                ],
            }
        if year:
            y = int(year)
            lo = first.month if first.year == y else 1
            hi = last.month if last.year == y else 12
            return {
                "show": True,
                "back": {"link": link({}), "title": _("All dates")},
                "choices": [
                    {
                        "link": link({year_f: year, month_f: m}),
                        "title": capfirst(
                            formats.date_format(datetime.date(y, m, 1), "YEAR_MONTH_FORMAT")
                        ),
                    }
                    for m in range(lo, hi + 1)
                ],
            }
        return {
            "show": True,
            "back": None,
            "choices": [
                {"link": link({year_f: str(y)}), "title": str(y)}
                for y in range(first.year, last.year + 1)
            ],
        }


def date_span(queryset: QuerySet[Any], field_name: str) -> tuple[Any, Any]:
    """The first and the last value of ``field_name`` in ``queryset`` (None, None if it
    has none), in ONE query that reads two entries of an index on the field.

    ``MIN`` and ``MAX`` in one aggregate make SQLite read every entry (its index
    shortcut is for a lone ``MIN`` or ``MAX``). Two ordered ``LIMIT 1`` subqueries are
    answered from the index by SQLite and PostgreSQL alike, filters included (e.g. the
    (status, start) index for a status filter).
    """
    dated = queryset.filter(**{f"{field_name}__isnull": False}).values(field_name)
    span = (
        queryset.model._default_manager.using(queryset.db)
        .annotate(
            first=Subquery(dated.order_by(field_name)[:1]),
            last=Subquery(dated.order_by(f"-{field_name}")[:1]),
        )
        .order_by()
        .values_list("first", "last")[:1]
    )
    for first, last in span:
        return first, last
    return None, None  # an empty table


# Generic in django-stubs only: subscripted for the type checker, plain at run time.
if TYPE_CHECKING:
    _Paginator = Paginator[WorkflowRun]
else:
    _Paginator = Paginator


class CappedPaginator(_Paginator):
    """Counts at most ``cap + 1`` rows: ``COUNT(*)`` over a whole big table costs time in
    proportion to it, a capped count does not. Beyond the cap, refine the filters."""

    cap = 10_000

    @cached_property
    def count(self) -> int:
        # Unordered: which cap + 1 rows are counted does not matter, and sorting every
        # match first (a search by name matches a quarter of the table) would.
        objects = self.object_list
        if isinstance(objects, QuerySet):
            return objects.order_by()[: self.cap + 1].count()
        return min(len(objects), self.cap + 1)


class WorkflowNameFilter(admin.SimpleListFilter):
    """Workflow names from the definitions, not a ``SELECT DISTINCT`` over every row."""

    title = gettext_lazy("workflow")
    parameter_name = "workflow_name"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        try:
            from wfstate.definitions import get_registry

            names = {d.name for d in get_registry().all()}
        except Exception:  # the list of names is a convenience, never a failure
            names = set()
        if self.value():
            names.add(str(self.value()))
        return [(name, name) for name in sorted(names)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(workflow_name=value) if value else queryset


def invalid_workflows() -> list[Any]:
    """The registry's invalid entries (each with ``name``, ``path``, ``problems()``)."""
    try:
        from wfstate.definitions import get_registry

        return [e for e in get_registry().entries() if not e.valid]
    except WFStateError:  # a listing aid, never a reason for the changelist to fail
        return []
