"""OpenTelemetry spans per run and step (issue 14, metrics bullet; optional extra)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from tests.helpers import call
from wfstate import tracing
from wfstate.state import parse_time
from wfstate.stores import get_store


@pytest.fixture
def exporter(settings: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "INDEX_ON_WRITE": False,
    }
    found = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(found))
    monkeypatch.setattr(tracing, "TRACER_PROVIDER", provider)
    return found


def ns(value: str | None) -> int:
    moment = parse_time(value)
    assert moment is not None
    return int(moment.timestamp() * 1_000_000_000)


def test_a_run_span_with_one_child_per_step_at_the_steps_own_times(
    exporter: InMemorySpanExporter,
) -> None:
    code, out, err = call("run_workflow", "demo", "--json", "--input", "flaky_failures=0")
    assert code == 0, err
    state = get_store().load(orjson.loads(out)["workflow_id"])
    spans = exporter.get_finished_spans()
    (run,) = [s for s in spans if s.name == "wfstate run demo"]
    assert run.attributes is not None
    assert run.attributes["wfstate.workflow_id"] == state.workflow_id
    assert run.attributes["wfstate.status"] == "completed"
    steps = {s.name.removeprefix("wfstate step "): s for s in spans if s is not run}
    assert set(steps) == set(state.states)
    for name, span in steps.items():
        assert span.parent is not None and span.parent.span_id == run.context.span_id
        assert span.start_time == ns(state.states[name].started_at)
        assert span.end_time == ns(state.states[name].completed_at)


def test_failed_steps_and_runs_are_errors_and_a_resume_traces_only_its_steps(
    exporter: InMemorySpanExporter,
) -> None:
    code, out, _ = call("run_workflow", "fails", "--json")
    assert code == 3
    workflow_id = orjson.loads(out)["workflow_id"]
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert spans["wfstate step boom"].status.status_code == StatusCode.ERROR
    assert spans["wfstate run fails"].status.status_code == StatusCode.ERROR
    exporter.clear()
    code, _, _ = call("resume_workflow", workflow_id)
    assert code == 3
    names = sorted(s.name for s in exporter.get_finished_spans())
    assert names == ["wfstate run fails", "wfstate step boom"]  # the re-run, once


def test_no_listener_without_a_provider_and_one_with(monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's defaults (its proxy, before any SDK is set up; the no-op provider):
    # spans would go nowhere, so nothing looks at the steps at every checkpoint.
    monkeypatch.setattr(tracing, "TRACER_PROVIDER", None)
    from opentelemetry import trace

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    with tracing.spans() as listeners:
        assert listeners == []
    monkeypatch.setattr(tracing, "TRACER_PROVIDER", trace.NoOpTracerProvider())
    with tracing.spans() as listeners:
        assert listeners == []
    monkeypatch.setattr(tracing, "TRACER_PROVIDER", TracerProvider())
    with tracing.spans() as listeners:
        assert len(listeners) == 1
