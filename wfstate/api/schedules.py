"""``GET schedules/`` and ``GET schedules/{name}/``: schedules with their next fire times."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from wfstate.api.schema import AUTH_ERRORS, _error, extend_schema
from wfstate.api.serializers import AnyJSONField
from wfstate.api.views import WFStateAPIMixin
from wfstate.triggers import schedules
from wfstate.triggers.models import Schedule


class ScheduleSerializer(serializers.ModelSerializer[Schedule]):
    inputs = serializers.DictField(child=AnyJSONField())
    next_fire_times = serializers.SerializerMethodField(
        help_text="the next three ticks (UTC), empty when disabled"
    )

    class Meta:
        model = Schedule
        fields = [
            "name",
            "workflow_name",
            "cron",
            "every_seconds",
            "timezone",
            "inputs",
            "catch_up",
            "enabled",
            "source",
            "last_tick",
            "next_fire_times",
        ]

    def get_next_fire_times(self, obj: Schedule) -> list[str]:
        if not obj.enabled:
            return []
        return [t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t in schedules.next_ticks(obj, 3)]


@extend_schema_view(
    list=extend_schema(
        summary="Schedules",
        description="Every schedule (from workflow files and the admin) with its next ticks.",
        responses={200: ScheduleSerializer(many=True), **AUTH_ERRORS},
    ),
    retrieve=extend_schema(
        summary="A schedule",
        parameters=[
            OpenApiParameter(
                "name", OpenApiTypes.STR, OpenApiParameter.PATH, description="The schedule's name."
            )
        ],
        responses={200: ScheduleSerializer, **AUTH_ERRORS, 404: _error("No such schedule.")},
    ),
)
class ScheduleViewSet(WFStateAPIMixin, viewsets.ViewSet):
    lookup_field = "name"
    lookup_value_regex = "[^/]+"

    def list(self, request: Request) -> Response:
        rows = Schedule.objects.order_by("workflow_name", "name")
        return Response(ScheduleSerializer(rows, many=True).data)

    def retrieve(self, request: Request, name: str) -> Any:
        return Response(ScheduleSerializer(get_object_or_404(Schedule, name=name)).data)
