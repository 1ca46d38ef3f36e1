"""The collector: run counters, gauges and histograms from the index (and step files).

Metrics (labels in braces):

* ``wfstate_runs_started_total{workflow}``: runs in the index (every run was started).
* ``wfstate_runs_finished_total{workflow,status}``: runs that ended, by final status.
* ``wfstate_runs{workflow,status}``: runs not yet ended (pending, running, waiting...).
* ``wfstate_runs_corrupt``: state files that cannot be parsed.
* ``wfstate_run_duration_seconds{workflow}``: histogram of finished runs' durations.
* ``wfstate_step_duration_seconds{workflow,state}``: histogram of the steps of finished
  runs, read from their files (the index has no per-step rows) once per run revision.
* ``wfstate_queue_lag_seconds``: how long the oldest pending run has been waiting.

Counters come from rows, so pruning runs lowers them: Prometheus reads that as a
counter reset, which ``rate()`` and ``increase()`` handle.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from django.db.models import Count, Min, Q, Sum
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from wfstate.exceptions import WFStateError
from wfstate.state import RunStatus, StepStatus

FINAL = ("completed", "failed", "cancelled")

# Seconds. Runs last from a second to hours; steps from milliseconds to an hour.
RUN_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)

# Files read per scrape for the step histogram: a first scrape over 100,000 runs
# catches up over several scrapes instead of timing out one.
STEP_READ_BUDGET = 2000


def _cumulative(
    counts: Iterable[int], buckets: tuple[float, ...], total: int
) -> list[tuple[str, float]]:
    out = [(_le(b), float(c)) for b, c in zip(buckets, counts, strict=True)]
    out.append(("+Inf", float(total)))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))


class _StepDurations:
    """Step durations of finished runs, read once per (run, revision) from the files."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[int, list[tuple[str, str, float]]]] = {}
        self._guard = threading.Lock()

    def refresh(self, rows: list[tuple[str, int]], budget: int | None = None) -> None:
        """Read the runs not seen at their revision yet (at most ``budget`` files)."""
        from wfstate.stores import get_store

        store = get_store()
        budget = STEP_READ_BUDGET if budget is None else budget
        with self._guard:
            current = dict(rows)
            for workflow_id in [w for w in self._runs if w not in current]:
                del self._runs[workflow_id]  # pruned or deleted
            read = 0
            for workflow_id, revision in rows:
                seen = self._runs.get(workflow_id)
                if seen is not None and seen[0] == revision:
                    continue
                if read >= budget:
                    break
                read += 1
                try:
                    state = store.load(workflow_id)
                except WFStateError:
                    self._runs[workflow_id] = (revision, [])
                    continue
                if state.status not in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED):
                    continue  # resumed since the row was read: next scrape
                name = sys.intern(state.workflow_name)
                self._runs[workflow_id] = (
                    revision,
                    [
                        (name, sys.intern(step_name), step.duration_ms / 1000)
                        for step_name, step in state.states.items()
                        if step.duration_ms is not None
                        and step.status in (StepStatus.COMPLETED, StepStatus.FAILED)
                    ],
                )

    def histograms(self) -> dict[tuple[str, str], tuple[list[int], int, float]]:
        """(workflow, state) -> (cumulative bucket counts, count, sum)."""
        found: dict[tuple[str, str], tuple[list[int], int, float]] = {}
        with self._guard:
            for _, steps in self._runs.values():
                for workflow, state, seconds in steps:
                    counts, count, total = found.get((workflow, state)) or (
                        [0] * len(STEP_BUCKETS),
                        0,
                        0.0,
                    )
                    for i, bound in enumerate(STEP_BUCKETS):
                        if seconds <= bound:
                            counts[i] += 1
                    found[(workflow, state)] = (counts, count + 1, total + seconds)
        return found


class WFStateCollector(Collector):
    """A prometheus-client collector over wfstate's index (register it once)."""

    def __init__(self) -> None:
        self.steps = _StepDurations()

    def describe(self) -> list[Metric]:
        # No queries at registration time (the database may not be ready yet).
        return []

    def collect(self) -> Iterator[Metric]:
        from wfstate.models import WorkflowRun

        runs = WorkflowRun.objects.filter(corrupt=False)
        started = CounterMetricFamily(
            "wfstate_runs_started",
            "Runs started, by workflow (from the index).",
            labels=["workflow"],
        )
        finished = CounterMetricFamily(
            "wfstate_runs_finished",
            "Runs that ended, by workflow and final status.",
            labels=["workflow", "status"],
        )
        active = GaugeMetricFamily(
            "wfstate_runs",
            "Runs that have not ended, by workflow and status (pending, running, waiting).",
            labels=["workflow", "status"],
        )
        per_workflow: dict[str, int] = {}
        for row in runs.values("workflow_name", "status").annotate(n=Count("id")).order_by():
            name, status, n = row["workflow_name"], row["status"], row["n"]
            per_workflow[name] = per_workflow.get(name, 0) + n
            if status in FINAL:
                finished.add_metric([name, status], n)
            else:
                active.add_metric([name, status], n)
        for name, n in sorted(per_workflow.items()):
            started.add_metric([name], n)
        yield started
        yield finished
        yield active
        yield GaugeMetricFamily(
            "wfstate_runs_corrupt",
            "State files that cannot be parsed (doctor --fix quarantines them).",
            value=WorkflowRun.objects.filter(corrupt=True).count(),
        )
        yield self._run_durations(runs)
        yield self._step_durations(runs)
        oldest = runs.filter(status="pending").aggregate(oldest=Min("started_at"))["oldest"]
        lag = (datetime.now(UTC) - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "wfstate_queue_lag_seconds",
            "How long the oldest pending run has waited for a worker (0: none waits).",
            value=max(lag, 0.0),
        )

    @staticmethod
    def _run_durations(runs: Any) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "wfstate_run_duration_seconds",
            "Durations of finished runs, by workflow.",
            labels=["workflow"],
        )
        ended = runs.filter(status__in=FINAL, duration_ms__isnull=False)
        buckets = {
            f"b{i}": Count("id", filter=Q(duration_ms__lte=bound * 1000))
            for i, bound in enumerate(RUN_BUCKETS)
        }
        rows = ended.values("workflow_name").annotate(
            n=Count("id"), total=Sum("duration_ms"), **buckets
        )
        for row in rows.order_by("workflow_name"):
            family.add_metric(
                [row["workflow_name"]],
                _cumulative([row[f"b{i}"] for i in range(len(RUN_BUCKETS))], RUN_BUCKETS, row["n"]),
                (row["total"] or 0) / 1000,
            )
        return family

    def _step_durations(self, runs: Any) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "wfstate_step_duration_seconds",
            "Durations of the steps of finished runs, by workflow and state.",
            labels=["workflow", "state"],
        )
        rows = list(runs.filter(status__in=FINAL).values_list("workflow_id", "revision"))
        self.steps.refresh(rows)
        for (workflow, state), (counts, count, total) in sorted(self.steps.histograms().items()):
            family.add_metric([workflow, state], _cumulative(counts, STEP_BUCKETS, count), total)
        return family
