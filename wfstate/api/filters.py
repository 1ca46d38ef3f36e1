"""Filtering, ordering, search and pagination of the run list (the index, never the files)."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

import django_filters
from django import forms
from django_filters.fields import IsoDateTimeField
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import PageNumberPagination

from wfstate.models import RunStatusChoices, WorkflowRun

_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,9}")


class StrictIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 field that refuses a present-but-empty value (``?started_after=``).

    HTML forms send empty fields, so django-filter reads "" as "no filter"; API clients
    don't, and an empty date is more likely a bug to report than a filter to drop.
    """

    def clean(self, value: Any) -> Any:
        if value == "":
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        cleaned = super().clean(value)
        if cleaned is None:
            return None
        # Compare in UTC: PostgreSQL refuses offsets beyond ±15:59 that ISO 8601 allows
        # (a 500 otherwise), and a time near year 1 may not survive the conversion.
        try:
            return cleaned.astimezone(UTC)
        except (OverflowError, ValueError):
            raise forms.ValidationError(
                "Enter a date and time that can be expressed in UTC.", code="invalid"
            ) from None


class StrictIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = StrictIsoDateTimeField


class WorkflowRunFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(
        choices=RunStatusChoices.choices,
        # One table, no joins: no duplicates to remove, and SELECT DISTINCT would make
        # every page (and its COUNT) sort the whole match.
        distinct=False,
        help_text="only runs with this status (repeat the parameter for several)",
    )
    workflow_name = django_filters.CharFilter(help_text="only runs of this workflow")
    started_after = StrictIsoDateTimeFilter(
        field_name="started_at", lookup_expr="gte", help_text="runs started at or after (ISO 8601)"
    )
    started_before = StrictIsoDateTimeFilter(
        field_name="started_at", lookup_expr="lt", help_text="runs started before (ISO 8601)"
    )

    class Meta:
        model = WorkflowRun
        fields = ["status", "workflow_name", "started_after", "started_before"]


class RunPagination(PageNumberPagination):
    """Page numbers, strictly: a ``page`` or ``page_size`` that is not what the schema
    says is refused (404 and 400) rather than silently replaced by a default."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    last_page_strings = ()

    def get_page_number(self, request: Any, paginator: Any) -> Any:
        value = request.query_params.get(self.page_query_param)
        if value is not None and not _POSITIVE_INT.fullmatch(value):
            message = self.invalid_page_message.format(page_number=value, message="not a page")
            raise NotFound(message)
        return super().get_page_number(request, paginator)

    def get_page_size(self, request: Any) -> int:
        value = request.query_params.get(self.page_size_query_param)
        if value is None:
            return self.page_size
        if not _POSITIVE_INT.fullmatch(value) or int(value) > self.max_page_size:
            raise ValidationError(
                {self.page_size_query_param: [f"An integer from 1 to {self.max_page_size}."]}
            )
        return int(value)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1}
            elif parameter["name"] == self.page_size_query_param:
                maximum = self.max_page_size
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": maximum}
        return parameters

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
