"""The Prometheus endpoint (issue 14, acceptance 7): after 20 runs, the numbers match."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import call
from wfstate import runs
from wfstate.metrics import collector as collector_module
from wfstate.metrics.collector import RUN_BUCKETS, STEP_BUCKETS
from wfstate.models import WorkflowRun
from wfstate.stores import get_store

# transaction=True: the engine indexes from a thread of its own.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("wfstate_settings")]


def scrape() -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """sample name -> labels -> value, from a real request to the endpoint."""
    response = Client().get("/metrics/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def buckets_of(values: list[float], bounds: tuple[float, ...]) -> dict[str, float]:
    counts = {repr(float(b)): float(sum(1 for v in values if v <= b)) for b in bounds}
    counts["+Inf"] = float(len(values))
    return counts


def test_after_20_runs_counters_gauges_and_histograms_match() -> None:
    ids = []
    for i in range(20):
        name = "fails" if i % 4 == 0 else "api_quick"
        code, out, _ = call("run_workflow", name, "--json")
        assert code == (3 if name == "fails" else 0)
        ids.append(orjson.loads(out)["workflow_id"])
    pending, _ = runs.create_run("api_quick")
    WorkflowRun.objects.filter(workflow_id=pending.workflow_id).update(
        started_at=timezone.now() - timedelta(seconds=120)
    )
    states = [get_store().load(w) for w in ids]

    samples = scrape()
    started = samples["wfstate_runs_started_total"]
    assert started == {(("workflow", "api_quick"),): 16.0, (("workflow", "fails"),): 5.0}
    assert samples["wfstate_runs_finished_total"] == {
        (("status", "completed"), ("workflow", "api_quick")): 15.0,
        (("status", "failed"), ("workflow", "fails")): 5.0,
    }
    assert samples["wfstate_runs"] == {(("status", "pending"), ("workflow", "api_quick")): 1.0}
    assert samples["wfstate_runs_corrupt"] == {(): 0.0}
    assert 119 < samples["wfstate_queue_lag_seconds"][()] < 3600

    for workflow in ("api_quick", "fails"):
        durations = [s.duration_ms() / 1000 for s in states if s.workflow_name == workflow]
        label = ("workflow", workflow)
        got = {
            dict(k)["le"]: v
            for k, v in samples["wfstate_run_duration_seconds_bucket"].items()
            if label in k
        }
        assert got == buckets_of(durations, RUN_BUCKETS)
        assert samples["wfstate_run_duration_seconds_count"][(label,)] == len(durations)
        assert samples["wfstate_run_duration_seconds_sum"][(label,)] == pytest.approx(
            sum(durations), abs=0.01
        )

    for workflow, step in (("api_quick", "greet"), ("fails", "boom")):
        durations = [
            s.states[step].duration_ms / 1000  # type: ignore[operator]
            for s in states
            if s.workflow_name == workflow
        ]
        labels = (("state", step), ("workflow", workflow))
        got = {
            dict(k)["le"]: v
            for k, v in samples["wfstate_step_duration_seconds_bucket"].items()
            if set(labels) <= set(k)
        }
        assert got == buckets_of(durations, STEP_BUCKETS)
        assert samples["wfstate_step_duration_seconds_count"][labels] == len(durations)
        assert samples["wfstate_step_duration_seconds_sum"][labels] == pytest.approx(sum(durations))

    # A deleted run leaves the counters and the step histogram (a counter reset).
    runs.delete_run(ids[1])
    samples = scrape()
    assert samples["wfstate_runs_started_total"][(("workflow", "api_quick"),)] == 15.0
    labels = (("state", "greet"), ("workflow", "api_quick"))
    assert samples["wfstate_step_duration_seconds_count"][labels] == 14.0


def test_the_step_histogram_catches_up_over_scrapes(monkeypatch: Any) -> None:
    for _ in range(3):
        assert call("run_workflow", "api_quick")[0] == 0
    monkeypatch.setattr(collector_module, "STEP_READ_BUDGET", 2)
    from wfstate.metrics.views import collector

    collector.steps = collector_module._StepDurations()
    labels = (("state", "greet"), ("workflow", "api_quick"))
    assert scrape()["wfstate_step_duration_seconds_count"][labels] == 2.0
    assert scrape()["wfstate_step_duration_seconds_count"][labels] == 3.0


def test_checkpoint_latency_is_observed_per_checkpoint_across_processes(tmp_path: Any) -> None:
    from pathlib import Path

    from django.conf import settings

    from tests.helpers import spawn
    from wfstate.events import log_path
    from wfstate.metrics.collector import CHECKPOINT_BUCKETS

    label = (("workflow", "ten_steps"),)

    def count_and_sum() -> tuple[float, float, dict[str, float]]:
        samples = scrape()
        got = {
            dict(k)["le"]: v
            for k, v in samples.get("wfstate_checkpoint_seconds_bucket", {}).items()
            if label[0] in k
        }
        return (
            samples.get("wfstate_checkpoint_seconds_count", {}).get(label, 0.0),
            samples.get("wfstate_checkpoint_seconds_sum", {}).get(label, 0.0),
            got,
        )

    # The collector lives as long as the process: count what these runs add.
    before_count, before_sum, before_buckets = count_and_sum()
    ids = []
    for _ in range(2):
        code, out, _ = call("run_workflow", "ten_steps", "--json", "--input", "pause=0")
        assert code == 0
        ids.append(orjson.loads(out)["workflow_id"])
    # One executed by another process, as an RQ worker or a command would.
    state, _ = runs.create_run("ten_steps", {"pause": "0"})
    child = spawn(Path(settings.WFSTATE["STORAGE_DIR"]), "recover_workflows")
    out, err = child.communicate(timeout=120)
    assert child.returncode == 0, out + err
    ids.append(state.workflow_id)
    from wfstate import index

    index.index_state(get_store().load(state.workflow_id))

    observed: list[float] = []
    for workflow_id in ids:
        path = log_path(get_store(), workflow_id)
        assert path is not None
        lines = [orjson.loads(raw) for raw in path.read_bytes().splitlines()]
        timed = [line["checkpoint_ms"] / 1000 for line in lines if "checkpoint_ms" in line]
        # Every checkpoint the executor wrote, timed (the first revision is create_run's).
        assert len(timed) == get_store().load(workflow_id).revision - 1
        assert all(seconds > 0 for seconds in timed)
        observed += timed

    after_count, after_sum, after_buckets = count_and_sum()
    assert after_count - before_count == len(observed) >= 3 * 10
    assert after_sum - before_sum == pytest.approx(sum(observed), abs=1e-6)
    expected = buckets_of(observed, CHECKPOINT_BUCKETS)
    for bound, n in expected.items():
        assert after_buckets[bound] - before_buckets.get(bound, 0.0) == n
    # Scraping again counts nothing twice.
    assert count_and_sum()[0] == after_count
