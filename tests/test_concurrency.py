"""Concurrency limits (issue 13): slot locks per key, a queue in creation order.

In-process tests use the file lock backend and execute runs by hand (a worker's part);
the crash tests SIGKILL real processes holding a slot; the acceptance test runs real RQ
workers over Redis with the Redis lock backend (tests/test_scale.py's Cluster), and
proves from the steps' own timestamps that no more than ``limit`` runs ever executed
at once. Also in the PostgreSQL pass of ``make test``.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from tests import scale_steps
from tests.helpers import spawn, wait_for
from wfstate import runs
from wfstate.definitions import loads_definition
from wfstate.exceptions import InvalidDefinition
from wfstate.state import RunStatus, WorkflowState
from wfstate.stores import get_store
from wfstate.triggers import concurrency
from wfstate.triggers.models import QueueEntry

pytestmark = [pytest.mark.postgres]

LIMITED = """\
name: limited
version: "1"
inputs:
  - {name: log, type: string, required: true}
  - {name: env, type: string, default: prod}
  - {name: gate, type: string, default: ""}
  - {name: nap, type: number, default: 0.005}
concurrency: {limit: LIMIT, key: "{{ inputs.env }}", on_limit: POLICY}
states:
  initial: first
  first:
    type: step
    call: tests.scale_steps.record
    with: {log: "{{ inputs.log }}", nap: "{{ inputs.nap }}"}
    on_success: middle
  middle:
    type: step
    call: tests.scale_steps.record
    with: {log: "{{ inputs.log }}", nap: "{{ inputs.nap }}", gate: "{{ inputs.gate }}"}
    on_success: last
  last:
    type: step
    call: tests.scale_steps.record
    with: {log: "{{ inputs.log }}", nap: "{{ inputs.nap }}"}
    on_success: done
  done: {type: terminal, status: success}
"""


def write_limited(directory: Path, limit: int = 1, policy: str = "queue") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = LIMITED.replace("LIMIT", str(limit)).replace("POLICY", policy)
    (directory / "limited.yaml").write_text(text, encoding="utf-8")


class Lab:
    def __init__(self, tmp_path: Path) -> None:
        self.log = tmp_path / "steps.log"
        self.workflows = tmp_path / "workflows"
        self.tmp = tmp_path
        self.threads: list[threading.Thread] = []
        self.results: dict[str, WorkflowState] = {}
        self.gates = itertools.count()

    def start(self, env: str = "prod", gate: Path | None = None) -> str:
        inputs = {"log": str(self.log), "env": env, "gate": str(gate or "")}
        return runs.start_run("limited", inputs, detach=True).workflow_id

    def gate(self) -> Path:
        return self.tmp / f"gate{next(self.gates)}"

    def in_thread(self, workflow_id: str) -> None:
        from django.db import connection

        def target() -> None:
            try:
                self.results[workflow_id] = runs.execute(workflow_id)
            finally:
                connection.close()

        thread = threading.Thread(target=target)
        thread.start()
        self.threads.append(thread)

    def step_started(self, workflow_id: str, step: str = "middle") -> bool:
        return any(
            e["run"] == workflow_id and e["step"] == step and e["phase"] == "start"
            for e in scale_steps.read_log(self.log)
        )

    def join(self) -> None:
        for thread in self.threads:
            thread.join(60)


@pytest.fixture
def lab(settings: Any, tmp_path: Path) -> Iterator[Lab]:
    made = Lab(tmp_path)
    write_limited(made.workflows)
    settings.WFSTATE = {
        **settings.WFSTATE,
        "STORAGE_DIR": tmp_path / "storage",
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], made.workflows],
    }
    try:
        yield made
    finally:
        for path in made.tmp.glob("gate*"):
            path.touch()
        made.join()


def enqueued(workflow_id: str) -> bool:
    """The run was handed to the (database) task backend again, after its creation."""
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(args_kwargs__args=[workflow_id]).count() > 1


def test_the_definition_checks_the_key_template() -> None:
    bad = LIMITED.replace("LIMIT", "1").replace("POLICY", "queue")
    bad = bad.replace("{{ inputs.env }}", "{{ inputs.env ")
    with pytest.raises(InvalidDefinition, match=":8: template"):
        loads_definition(bad)
    with pytest.raises(InvalidDefinition):
        loads_definition(LIMITED.replace("LIMIT", "0").replace("POLICY", "queue"))
    spec = loads_definition(LIMITED.replace("LIMIT", "3").replace("POLICY", "cancel_oldest"))
    assert spec.concurrency is not None
    assert (spec.concurrency.limit, spec.concurrency.on_limit) == (3, "cancel_oldest")


@pytest.mark.django_db(transaction=True)
def test_runs_over_the_limit_wait_in_creation_order(lab: Lab, admin_client: Client) -> None:
    gate = lab.gate()
    first = lab.start(gate=gate)
    second, third = lab.start(), lab.start()
    other_env = lab.start(env="staging")
    lab.in_thread(first)
    wait_for(lambda: lab.step_started(first), 60, "the first run to hold the slot")

    # Over the limit: left pending, queued in order.
    assert runs.execute(second).status == RunStatus.PENDING
    assert runs.execute(third).status == RunStatus.PENDING
    assert concurrency.queue_position(second) == 0
    assert concurrency.queue_position(third) == 1
    assert concurrency.queue_position(first) is None
    response = admin_client.get(f"/api/wfstate/runs/{third}/")
    assert response.json()["queue_position"] == 1
    page = admin_client.get(reverse("admin:wfstate_workflowrun_change", args=[third]))
    assert "number 2 in the queue" in page.content.decode()
    queue = admin_client.get(reverse("admin:wfstate_queueentry_changelist")).content.decode()
    assert third in queue
    # Another key has its own slot.
    assert runs.execute(other_env).status == RunStatus.COMPLETED

    gate.touch()
    lab.join()
    assert lab.results[first].status == RunStatus.COMPLETED
    # The holder handed its slot on: the next queued run was enqueued, not the one after.
    assert enqueued(second)
    assert not enqueued(third)
    # Out of turn, the third run does not take the free slot while the second waits.
    assert runs.execute(third).status == RunStatus.PENDING
    assert runs.execute(second).status == RunStatus.COMPLETED
    assert enqueued(third)
    assert runs.execute(third).status == RunStatus.COMPLETED
    assert not QueueEntry.objects.exists()

    # One at a time, for the steps' own clocks.
    per_run = scale_steps.executions(scale_steps.read_log(lab.log))
    spans = sorted(
        (min(s["start"] for s in steps), max(s["end"] for s in steps))
        for run, steps in per_run.items()
        if run != other_env
    )
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_queued_run_leaves_the_queue(lab: Lab) -> None:
    gate = lab.gate()
    holder, doomed, after = lab.start(gate=gate), lab.start(), lab.start()
    lab.in_thread(holder)
    wait_for(lambda: lab.step_started(holder), 60, "the holder to start")
    assert runs.execute(doomed).status == RunStatus.PENDING
    assert runs.execute(after).status == RunStatus.PENDING
    assert runs.cancel_run(doomed)[0] == "cancelled"
    gate.touch()
    lab.join()
    # The cancelled run no longer stands in the way of the one behind it: the holder
    # woke the live run behind it, not the cancelled one.
    assert enqueued(after)
    assert not enqueued(doomed)
    assert runs.execute(after).status == RunStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_cancel_newest_cancels_the_run_over_the_limit(lab: Lab) -> None:
    write_limited(lab.workflows, policy="cancel_newest")
    gate = lab.gate()
    holder, newest = lab.start(gate=gate), lab.start()
    lab.in_thread(holder)
    wait_for(lambda: lab.step_started(holder), 60, "the holder to start")
    state = runs.execute(newest)
    assert state.status == RunStatus.CANCELLED
    assert "concurrency limit of 1" in (state.error or "")
    assert get_store().load(newest).status == RunStatus.CANCELLED
    gate.touch()
    lab.join()
    assert lab.results[holder].status == RunStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_cancel_oldest_stops_the_holder_and_takes_its_slot(lab: Lab) -> None:
    write_limited(lab.workflows, policy="cancel_oldest")
    gate = lab.gate()
    oldest, newest = lab.start(gate=gate), lab.start()
    lab.in_thread(oldest)
    wait_for(lambda: lab.step_started(oldest), 60, "the oldest run to start")
    assert runs.execute(newest).status == RunStatus.PENDING
    lab.join()  # the holder stops on the cancel request, within its step's poll
    assert lab.results[oldest].status == RunStatus.CANCELLED
    assert enqueued(newest)
    assert runs.execute(newest).status == RunStatus.COMPLETED


@pytest.mark.django_db(transaction=True)
def test_a_slot_held_by_a_killed_executor_frees_with_its_lock(lab: Lab, tmp_path: Path) -> None:
    gate = lab.gate()
    victim = lab.start(gate=gate)
    waiting = lab.start()
    env = {
        "WFSTATE_TEST_WORKFLOW_DIR": str(lab.workflows),
    }
    proc = spawn(tmp_path / "storage", "resume_workflow", victim, **env)
    try:
        wait_for(lambda: lab.step_started(victim), 60, "the victim to hold the slot")
        assert runs.execute(waiting).status == RunStatus.PENDING
        assert concurrency.wake_queues() == []  # the slot is held: nobody to wake
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    # The scheduler's pass finds the freed slot and wakes the queue.
    assert wait_for(concurrency.wake_queues, 30, "the slot to free") == [waiting]
    assert runs.execute(waiting).status == RunStatus.COMPLETED


# --- acceptance 3: RQ workers, Redis locks ---------------------------------------------------


@pytest.fixture
def cluster(settings: Any, tmp_path: Path) -> Iterator[Any]:
    from tests.helpers import Cluster

    made = Cluster(tmp_path)
    made.settings(settings)
    write_limited(made.workflows, limit=2)
    try:
        yield made
    finally:
        made.close()


def _max_parallel(per_run: dict[str, list[dict[str, Any]]]) -> int:
    """The most runs executing at one instant, by their steps' own timestamps."""
    edges = []
    for steps in per_run.values():
        edges.append((min(s["start"] for s in steps), 1))
        edges.append((max(s["end"] for s in steps), -1))
    running = most = 0
    for _t, delta in sorted(edges, key=lambda e: (e[0], e[1])):
        running += delta
        most = max(most, running)
    return most


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_four_rq_workers_never_run_more_than_the_limit(cluster: Any) -> None:
    cluster.start_workers(4)
    store = get_store()
    inputs = {"log": str(cluster.log), "nap": 0.3}
    ids = [runs.start_run("limited", inputs, detach=True).workflow_id for _ in range(10)]

    def all_done() -> bool:
        return all(store.load(i).status == RunStatus.COMPLETED for i in ids)

    try:
        wait_for(all_done, 300, "10 limited runs to complete")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.worker_output()}") from None
    per_run = scale_steps.executions(scale_steps.read_log(cluster.log))
    assert set(per_run) == set(ids)
    # Never more than the limit, and the limit was used (with limit 5 the same run
    # shows 3 or 4 at once: the check can fail).
    assert _max_parallel(per_run) == 2
    # A holder leaves the queue just after its last checkpoint.
    wait_for(lambda: not QueueEntry.objects.exists(), 30, "the queue to empty")


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
def test_a_killed_worker_frees_its_slot_and_the_rest_complete(cluster: Any) -> None:
    cluster.start_workers(4)
    store = get_store()
    gate = cluster.log.parent / "gate"
    victim = runs.start_run(
        "limited", {"log": str(cluster.log), "gate": str(gate), "nap": 0.05}, detach=True
    ).workflow_id

    def victim_in_middle() -> dict[str, Any] | None:
        for event in scale_steps.read_log(cluster.log):
            if event["run"] == victim and event["step"] == "middle" and event["phase"] == "start":
                return event
        return None

    started = wait_for(victim_in_middle, 120, "the victim to hold a slot")
    inputs = {"log": str(cluster.log), "nap": 0.1}
    rest = [runs.start_run("limited", inputs, detach=True).workflow_id for _ in range(6)]
    # A scheduler is running, as in a deployment: its pass wakes queues a crash left.
    scheduler = subprocess.Popen(
        [os.sys.executable, "manage.py", "run_scheduler", "--interval", "0.5"],  # type: ignore[attr-defined]
        cwd=str(Path(__file__).resolve().parent.parent),
        env=cluster.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from tests.helpers import parent_of

        os.kill(started["pid"], signal.SIGKILL)
        os.kill(parent_of(started["pid"]), signal.SIGKILL)

        def rest_done() -> bool:
            return all(store.load(i).status == RunStatus.COMPLETED for i in rest)

        try:
            wait_for(rest_done, 300, "the other runs to complete")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{cluster.worker_output()}") from None
    finally:
        scheduler.terminate()
        scheduler.wait(30)
    per_run = scale_steps.executions(scale_steps.read_log(cluster.log))
    assert set(rest) <= set(per_run)
    assert store.load(victim).status == RunStatus.RUNNING  # crashed; recover_workflows' job
    assert _max_parallel({k: v for k, v in per_run.items() if k in rest}) <= 2
