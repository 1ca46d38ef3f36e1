"""Filtering, ordering, search and pagination of the run list (the index, never the files)."""

from __future__ import annotations

from typing import Any

import django_filters
from rest_framework.pagination import PageNumberPagination

from wfstate.models import RunStatusChoices, WorkflowRun


class WorkflowRunFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(
        choices=RunStatusChoices.choices,
        help_text="only runs with this status (repeat the parameter for several)",
    )
    workflow_name = django_filters.CharFilter(help_text="only runs of this workflow")
    started_after = django_filters.IsoDateTimeFilter(
        field_name="started_at", lookup_expr="gte", help_text="runs started at or after (ISO 8601)"
    )
    started_before = django_filters.IsoDateTimeFilter(
        field_name="started_at", lookup_expr="lt", help_text="runs started before (ISO 8601)"
    )

    class Meta:
        model = WorkflowRun
        fields = ["status", "workflow_name", "started_after", "started_before"]


class RunPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        # DRF writes OpenAPI 3.0's `nullable`; the API's schema is OpenAPI 3.1.
        link = {"type": ["string", "null"], "format": "uri"}
        return {
            "type": "object",
            "required": ["count", "next", "previous", "results"],
            "properties": {
                "count": {"type": "integer", "example": 123},
                "next": {**link, "example": "http://api.example.org/runs/?page=4"},
                "previous": {**link, "example": "http://api.example.org/runs/?page=2"},
                "results": schema,
            },
        }
