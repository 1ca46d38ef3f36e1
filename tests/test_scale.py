"""Scale-out (SPEC §10): RQ workers over Redis, Redis locks, one shared storage directory.

Real services on loopback: the machine's Redis (queue, locks) and the test database
(SQLite file, or PostgreSQL with WFSTATE_TEST_DB=postgres) for the index. Workers are
``manage.py rqworker`` processes, exactly as a deployment runs them. Each test has its
own RQ queue name and Redis key prefix (deleted afterwards), and every process it starts
carries that queue name in its environment: teardown kills them all by pid, work horses
and orphans included, whether the test passed or not.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command

from tests import scale_steps
from tests.helpers import Cluster, parent_of, wait_for
from wfstate import runs, tasks
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus
from wfstate.stores import get_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,  # also runs in the PostgreSQL pass of `make test`
    pytest.mark.django_db(transaction=True),
]


def wait_or_explain(
    cluster: Cluster, condition: Callable[[], Any], timeout: float, what: str
) -> Any:
    try:
        return wait_for(condition, timeout, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.worker_output()}") from None


def test_four_workers_run_200_runs_each_delivered_twice(cluster: Cluster) -> None:
    cluster.start_workers(4)
    store = get_store()
    ids = []
    job_ids = []
    for _ in range(200):
        state = runs.start_run("scale", {"log": str(cluster.log)}, detach=True)
        ids.append(state.workflow_id)
        job_ids.append(tasks.enqueue_execution(state.workflow_id))  # a duplicate delivery

    def all_completed() -> bool:
        return all(store.load(i).status == RunStatus.COMPLETED for i in ids)

    wait_or_explain(cluster, all_completed, 600, "200 runs to complete")

    # Every run ran each of its steps exactly once, and never two steps at a time.
    per_run = scale_steps.executions(scale_steps.read_log(cluster.log))
    assert set(per_run) == set(ids)
    for workflow_id, steps in per_run.items():
        assert sorted(s["step"] for s in steps) == sorted(scale_steps.STEPS), workflow_id
        # One executor per run: its three steps in one work horse.
        assert len({s["pid"] for s in steps}) == 1, workflow_id
    assert scale_steps.overlaps(per_run) == []
    starts = [e for e in scale_steps.read_log(cluster.log) if e["phase"] == "start"]
    assert len(starts) == 3 * 200  # no step began twice, not even one that was cut short
    # The work was shared by all four workers.
    assert len({s["worker"] for steps in per_run.values() for s in steps}) == 4

    # Nothing lost in the queue: every delivery, duplicates included, ended without error.
    backend = tasks.execute_workflow.get_backend()

    def jobs_done() -> list[Any] | None:
        results = [backend.get_result(job_id) for job_id in job_ids]
        return results if all(r.is_finished for r in results) else None

    results = wait_or_explain(cluster, jobs_done, 60, "every duplicate delivery to finish")
    assert {r.return_value for r in results} <= {"completed", "already running"}

    # The index (SQLite file or PostgreSQL) followed the files of every worker.
    def indexed() -> bool:
        return WorkflowRun.objects.filter(workflow_id__in=ids, status="completed").count() == 200

    wait_or_explain(cluster, indexed, 60, "the index to show 200 completed runs")
    row = WorkflowRun.objects.get(workflow_id=ids[0])
    assert row.steps_done == row.steps_total > 0
    assert row.revision == store.load(ids[0]).revision


def test_a_killed_worker_run_is_recovered_by_another(cluster: Cluster) -> None:
    cluster.start_workers(2)
    store = get_store()
    gate = cluster.log.parent / "gate"
    state = runs.start_run("scale", {"log": str(cluster.log), "gate": str(gate)}, detach=True)
    workflow_id = state.workflow_id

    def middle_started() -> dict[str, Any] | None:
        for event in scale_steps.read_log(cluster.log):
            if event["step"] == "middle" and event["phase"] == "start":
                return event
        return None

    started = wait_or_explain(cluster, middle_started, 120, "the middle step to start")
    owner = store.run_lock_owner(workflow_id)
    assert owner is not None
    assert owner["pid"] == started["pid"]  # the work horse executing the run
    first_before = store.load(workflow_id).states["first"]

    # The worker dies with its work horse, mid-step (a host going down).
    worker_pid = parent_of(started["pid"])
    assert worker_pid in [p.pid for p in cluster.workers]
    os.kill(started["pid"], signal.SIGKILL)
    os.kill(worker_pid, signal.SIGKILL)
    began = time.monotonic()
    wait_for(lambda: store.run_lock_owner(workflow_id) is None, 10, "the run lock to be freed")
    assert time.monotonic() - began < 5
    crashed = store.load(workflow_id)
    assert crashed.status == RunStatus.RUNNING
    assert crashed.current_state == "middle"

    gate.touch()
    out = StringIO()
    call_command("recover_workflows", "--detach", stdout=out)
    assert f"run {workflow_id}: enqueued" in out.getvalue()

    def completed() -> bool:
        return store.load(workflow_id).status == RunStatus.COMPLETED

    wait_or_explain(cluster, completed, 120, "another worker to finish the run")
    events = scale_steps.read_log(cluster.log)
    done = scale_steps.executions(events)[workflow_id]
    by_step = {s["step"]: s for s in done}
    # The completed step was not run again; the killed one was, by the other worker.
    assert [e["step"] for e in events if e["phase"] == "start"] == [
        "first",
        "middle",
        "middle",
        "last",
    ]
    assert sorted(by_step) == ["first", "last", "middle"]
    assert by_step["first"]["pid"] == started["pid"]
    assert by_step["middle"]["worker"] != started["worker"]
    assert by_step["last"]["worker"] == by_step["middle"]["worker"]
    assert store.load(workflow_id).states["first"] == first_before
    assert scale_steps.overlaps({workflow_id: done}) == []
