"""Include where Prometheus scrapes: ``path("metrics/", include("wfstate.metrics.urls"))``."""

from django.urls import path

from wfstate.metrics import views

app_name = "wfstate_metrics"
urlpatterns = [path("", views.metrics, name="metrics")]
