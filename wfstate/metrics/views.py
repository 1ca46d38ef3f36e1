"""The scrape endpoint: Prometheus' text format, from :class:`WFStateCollector`."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from wfstate.metrics.collector import WFStateCollector

# One collector per process: it keeps the step durations it has read between scrapes.
collector = WFStateCollector()
registry = CollectorRegistry(auto_describe=False)
registry.register(collector)


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    """Every wfstate metric, computed now from the index (see docs/metrics.md)."""
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
