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
* ``wfstate_checkpoint_seconds{workflow}``: histogram of how long executors took to
  write each checkpoint, read from the runs' events logs (``checkpoint_ms``, written
  by the executor that timed it), each log's new lines once.

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

# Seconds: a checkpoint is a write and a rename (fsync for a durable one).
CHECKPOINT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

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


class _CheckpointLatencies:
    """Checkpoint write times, from the ``checkpoint_ms`` of the runs' events logs.

    Executors are other processes (other hosts) than the one answering ``/metrics``:
    each one writes the time of every checkpoint it made into the run's events log
    (``wfstate.events``), and here each log is read from where the last scrape
    stopped, when its run's revision moved. The histogram only grows (it is a
    counter): a pruned run's checkpoints stay counted until the process restarts,
    which Prometheus reads as a counter reset.
    """

    def __init__(self) -> None:
        self._offsets: dict[str, tuple[int, int]] = {}  # run -> (revision, bytes read)
        self._counts: dict[str, tuple[list[int], int, float]] = {}
        self._guard = threading.Lock()

    def refresh(self, rows: list[tuple[str, str, int]], budget: int | None = None) -> None:
        """Read the new lines of the logs of the runs whose revision moved."""
        import orjson

        from wfstate.events import log_path
        from wfstate.stores import get_store

        store = get_store()
        budget = STEP_READ_BUDGET if budget is None else budget
        with self._guard:
            current = {workflow_id for workflow_id, _, _ in rows}
            for workflow_id in [w for w in self._offsets if w not in current]:
                del self._offsets[workflow_id]
            read = 0
            for workflow_id, workflow, revision in rows:
                seen_revision, offset = self._offsets.get(workflow_id, (-1, 0))
                if seen_revision == revision:
                    continue
                if read >= budget:
                    break
                read += 1
                path = log_path(store, workflow_id)
                if path is None:
                    continue  # a store without side files keeps no log
                try:
                    with open(path, "rb") as fh:
                        fh.seek(offset)
                        data = fh.read()
                except OSError:
                    data = b""
                end = data.rfind(b"\n") + 1  # a line being written: next scrape
                self._offsets[workflow_id] = (revision, offset + end)
                for raw in data[:end].splitlines():
                    try:
                        ms = orjson.loads(raw).get("checkpoint_ms")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    if isinstance(ms, int | float):
                        self._observe(sys.intern(workflow), ms / 1000)

    def _observe(self, workflow: str, seconds: float) -> None:
        counts, count, total = self._counts.get(workflow) or ([0] * len(CHECKPOINT_BUCKETS), 0, 0.0)
        for i, bound in enumerate(CHECKPOINT_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
        self._counts[workflow] = (counts, count + 1, total + seconds)

    def histograms(self) -> dict[str, tuple[list[int], int, float]]:
        with self._guard:
            return {k: (list(c), n, t) for k, (c, n, t) in self._counts.items()}


class WFStateCollector(Collector):
    """A prometheus-client collector over wfstate's index (register it once)."""

    def __init__(self) -> None:
        self.steps = _StepDurations()
        self.checkpoints = _CheckpointLatencies()

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
        yield self._checkpoint_latencies(runs)
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

    def _checkpoint_latencies(self, runs: Any) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "wfstate_checkpoint_seconds",
            "How long executors took to write a checkpoint of a run, by workflow.",
            labels=["workflow"],
        )
        rows = list(runs.values_list("workflow_id", "workflow_name", "revision"))
        self.checkpoints.refresh([(str(w), str(n), int(r)) for w, n, r in rows])
        for workflow, (counts, count, total) in sorted(self.checkpoints.histograms().items()):
            family.add_metric([workflow], _cumulative(counts, CHECKPOINT_BUCKETS, count), total)
        return family
