"""OpenTelemetry spans per run and step, when ``opentelemetry-api`` is installed.

One span per execution of a run (``wfstate run <workflow>``) and, as its children, one
span per step that ends during it (``wfstate step <state>``), carrying the step's own
start and end times from the state file, its attempt, exit code and status. The spans
are made by a checkpoint listener, so the engine knows nothing of tracing; without
``opentelemetry-api`` (``pip install wfstate[tracing]``), or without a tracer provider
set up by the host (an SDK's, before the run starts), there is no listener at all.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from wfstate.state import RunStatus, StepStatus, StepWatch, WorkflowState, parse_time

try:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # the optional extra is not installed
    trace = None  # type: ignore[assignment]

# A test (or a host) may hand its own provider; None: the global one.
TRACER_PROVIDER: Any = None

_ENDED = (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED)


def _ns(value: str | None) -> int | None:
    moment = parse_time(value)
    return int(moment.timestamp() * 1_000_000_000) if moment is not None else None


class SpanListener:
    """Called after every checkpoint of one execution (from any branch's thread)."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self.run_span: Any = None
        self.seen: set[tuple[str, str | None]] = set()
        # Only the steps that changed since the last checkpoint can have ended since.
        self.watch = StepWatch()
        self._guard = threading.Lock()

    def __call__(self, state: WorkflowState) -> None:
        with self._guard:
            if self.run_span is None:
                self.run_span = self.tracer.start_span(
                    f"wfstate run {state.workflow_name}",
                    attributes={
                        "wfstate.workflow_id": state.workflow_id,
                        "wfstate.workflow_name": state.workflow_name,
                        "wfstate.workflow_version": state.workflow_version,
                    },
                )
                # Steps that ended in an earlier execution (before a resume) are not ours.
                self.seen = {(n, s.completed_at) for n, s in state.states.items() if s.completed_at}
            parent = None
            for name in self.watch.changed(state.states):
                step = state.states[name]
                key = (name, step.completed_at)
                if step.status not in _ENDED or not step.completed_at or key in self.seen:
                    continue
                self.seen.add(key)
                if parent is None:
                    parent = trace.set_span_in_context(self.run_span)
                span = self.tracer.start_span(
                    f"wfstate step {name}",
                    context=parent,
                    start_time=_ns(step.started_at),
                    attributes={
                        "wfstate.workflow_id": state.workflow_id,
                        "wfstate.state": name,
                        "wfstate.status": str(step.status),
                        "wfstate.attempt": step.attempt,
                        **(
                            {"wfstate.exit_code": step.exit_code}
                            if step.exit_code is not None
                            else {}
                        ),
                    },
                )
                if step.status == StepStatus.FAILED:
                    span.set_status(Status(StatusCode.ERROR, step.error or "failed"))
                span.end(end_time=_ns(step.completed_at))
            if RunStatus(state.status).is_final:
                self._end(state)

    def _end(self, state: WorkflowState | None) -> None:
        if self.run_span is None:
            return
        if state is not None:
            self.run_span.set_attribute("wfstate.status", str(state.status))
            if state.status == RunStatus.FAILED:
                self.run_span.set_status(Status(StatusCode.ERROR, state.error or "failed"))
        self.run_span.end()
        self.run_span = None

    def close(self) -> None:
        """End the run's span if the execution stopped before the run ended (parked)."""
        with self._guard:
            self._end(None)


def _configured() -> bool:
    """Whether spans go anywhere: a provider handed to us, or one the host set. With
    the API's defaults (its proxy before any SDK is set up, or the no-op provider) the
    spans would cost nothing, but the listener's look at every step at every checkpoint
    would: then there is no listener."""
    provider = TRACER_PROVIDER if TRACER_PROVIDER is not None else trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


@contextlib.contextmanager
def spans() -> Iterator[list[Callable[[WorkflowState], None]]]:
    """The checkpoint listeners of one execution: a span listener, or none."""
    if trace is None or not _configured():
        yield []
        return
    listener = SpanListener(trace.get_tracer("wfstate", tracer_provider=TRACER_PROVIDER))
    try:
        yield [listener]
    finally:
        listener.close()
