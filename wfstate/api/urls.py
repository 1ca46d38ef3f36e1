"""Mount with ``path("api/wfstate/", include("wfstate.api.urls"))`` (any prefix works)."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import SimpleRouter

from wfstate.api import events, output, schema, views
from wfstate.api.schedules import ScheduleViewSet

app_name = "wfstate-api"

router = SimpleRouter()
router.register("runs", views.RunViewSet, basename="run")
router.register("workflows", views.WorkflowViewSet, basename="workflow")
router.register("schedules", ScheduleViewSet, basename="schedule")

urlpatterns = [
    path("runs/<str:workflow_id>/events/", events.RunEventsView.as_view(), name="run-events"),
    path(
        "runs/<str:workflow_id>/steps/<str:state>/output/",
        output.StepOutputView.as_view(),
        name="run-step-output",
    ),
    path("", include(router.urls)),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
]
