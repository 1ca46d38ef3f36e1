"""Scale-out (SPEC §10): RQ workers over Redis, Redis locks, one shared storage directory.

Real services on loopback: the machine's Redis (queue, locks) and the test database
(SQLite file, or PostgreSQL with WFSTATE_TEST_DB=postgres) for the index. Workers are
``manage.py rqworker`` processes, exactly as a deployment runs them. Each test has its
own RQ queue name and Redis key prefix (deleted afterwards), and every process it starts
carries that queue name in its environment: teardown kills them all by pid, work horses
and orphans included, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.db import connection

from tests import scale_steps
from tests.engine_helpers import REPO, pid_alive, wait_for
from tests.test_redis_locks import REDIS_URL, delete_prefix
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


def tagged_pids(tag: str) -> list[int]:
    """Every live process whose environment carries ``tag`` (ours, and only ours)."""
    found = []
    needle = tag.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    return int(stat.rsplit(") ", 1)[1].split()[1])


class Cluster:
    """A queue, a lock prefix, a storage directory and the workers serving them."""

    def __init__(self, tmp_path: Path) -> None:
        token = uuid.uuid4().hex[:10]
        self.queue = f"wfstate-test-{token}"
        self.prefix = f"wfstate-test-{token}"
        self.tag = f"WFSTATE_TEST_RQ_QUEUE={self.queue}"
        self.storage = tmp_path / "storage"
        self.workflows = tmp_path / "workflows"
        self.log = tmp_path / "steps.log"
        self.output = tmp_path / "workers"
        self.output.mkdir()
        scale_steps.write_workflow(self.workflows)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)

    def settings(self, settings: Any) -> None:
        """Point this (test) process at the same queue, locks and storage."""
        settings.WFSTATE = {
            **settings.WFSTATE,
            "STORAGE_DIR": self.storage,
            "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], self.workflows],
            "LOCK_BACKEND": "redis",
            "STORE": {
                "BACKEND": "wfstate.stores.JSONFileStore",
                "OPTIONS": {"lock_options": {"redis_url": REDIS_URL, "prefix": self.prefix}},
            },
            "TASK_BACKEND": "default",
            "TASK_QUEUE": self.queue,
            "INDEX_ON_WRITE": True,
        }
        # "default" must stay a valid queue: wfstate's task is declared on it, and the
        # Tasks API validates that when wfstate.tasks is imported. Nothing is put on it.
        settings.TASKS = {
            "default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default", self.queue]}
        }
        settings.RQ_QUEUES = {
            name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": -1} for name in ("default", self.queue)
        }

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONUNBUFFERED": "1",
            "WFSTATE_STORAGE_DIR": str(self.storage),
            "WFSTATE_INDEX_ON_WRITE": "1",
            "WFSTATE_TEST_TASKS": "rq",
            "WFSTATE_TEST_RQ_QUEUE": self.queue,
            "WFSTATE_TEST_REDIS_URL": REDIS_URL,
            "WFSTATE_TEST_LOCK_BACKEND": "redis",
            "WFSTATE_TEST_REDIS_PREFIX": self.prefix,
            "WFSTATE_TEST_WORKFLOW_DIR": str(self.workflows),
        }
        if connection.vendor == "postgresql":
            # The workers use the test database pytest-django made, not its model.
            env["WFSTATE_TEST_PG_NAME"] = str(connection.settings_dict["NAME"])
        return env

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            index = len(self.workers)
            out = open(self.output / f"worker{index}.log", "wb")  # noqa: SIM115
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "manage.py",
                        "rqworker",
                        "--job-class",
                        "django_tasks_rq.Job",
                        "--name",
                        f"{self.queue}-w{index}",
                        self.queue,
                    ],
                    cwd=REPO,
                    env=self.env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
            out.close()
        # Ready when registered in Redis: nothing is enqueued before all can take it.
        wait_for(
            lambda: self.redis.scard(f"rq:workers:{self.queue}") >= len(self.workers),
            90,
            f"{count} RQ workers to register",
        )

    def worker_output(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.output.iterdir())
        )

    def close(self) -> None:
        # Workers, their work horses (own process groups) and any orphaned horse.
        for _ in range(3):
            pids = tagged_pids(self.tag)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            with contextlib.suppress(AssertionError):
                wait_for(lambda pids=pids: not any(map(pid_alive, pids)), 10, "the kills")
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        delete_prefix(self.prefix)
        scale_steps.delete_rq_queue(self.redis, self.queue)
        self.redis.close()


@pytest.fixture
def cluster(settings: Any, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    made.settings(settings)
    try:
        yield made
    finally:
        made.close()


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
