"""How fast runs start: from a schedule's tick, and from ``POST runs/``, to the first step.

    .venv/bin/python bench/triggers.py [--posts 40] [--db-posts 20] [--ticks 10]
                                       [--db-interval 0.1] [--db-short-interval 0.05]

Each measurement meets a warm, idle worker: it has executed runs already, and the
previous run (and its task) ended before the next request or tick.

* ``post_rq``: ``POST runs/`` (Django's test client in this process) -> the run's first
  step starting in an RQ work horse (``manage.py rqworker``, fork per job, run lock in
  Redis). Goal: median under 50 ms on this machine.
* ``post_rq_simple_worker``: the same with RQ's ``SimpleWorker`` (no fork per job).
* ``tick_rq``: a schedule ``every: 1s`` fired by one ``run_scheduler`` process -> the
  run's first step in an RQ work horse.
* ``post_db``, ``post_db_short_poll``: ``POST runs/`` with the database task backend,
  ``manage.py db_worker`` at its default poll interval (1 s) and at
  ``--db-short-interval``. A request comes at a random moment of the worker's poll
  (uniform over one interval after the previous run ended), as requests do: the median
  is about half the interval plus the start's own cost.
* ``tick_db``: a schedule's tick with ``db_worker`` polling every ``--db-interval``
  seconds (its latency floor).

The first step's start is the engine's own ``started_at`` of that step in the state file
(UTC, microseconds); a tick's instant is the tick itself; a POST's instant is taken just
before the request. All processes share this host's clock. Standalone: a temp SQLite
database and storage directory under the repository, the machine's Redis, own queue
name and key prefix; everything is removed at the end. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REDIS_URL = os.environ.get("WFSTATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TMP = Path(tempfile.mkdtemp(prefix=".bench-triggers-", dir=REPO))
QUEUE = f"wfstate-bench-{uuid.uuid4().hex[:10]}"
WORKFLOW = """\
name: bench_trigger
version: "1"
inputs:
  - {name: n, type: integer, default: 0}
states:
  initial: step
  step: {type: step, call: bench._steps.noop, on_success: done}
  done: {type: terminal, status: success}
"""

# The test settings' switches: RQ over Redis with Redis locks for this process and the
# RQ workers; the database-backend round drops the RQ switches for its children.
RQ_ENV = {
    "WFSTATE_TEST_TASKS": "rq",
    "WFSTATE_TEST_RQ_QUEUE": QUEUE,
    "WFSTATE_TEST_REDIS_URL": REDIS_URL,
    "WFSTATE_TEST_LOCK_BACKEND": "redis",
    "WFSTATE_TEST_REDIS_PREFIX": QUEUE,
}
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
        "WFSTATE_TEST_TMP": str(TMP),
        "WFSTATE_STORAGE_DIR": str(TMP / "storage"),
        "WFSTATE_TEST_WORKFLOW_DIR": str(TMP / "workflows"),
        "WFSTATE_INDEX_ON_WRITE": "1",
        **RQ_ENV,
    }
)
(TMP / "workflows").mkdir()
(TMP / "workflows" / "bench_trigger.yaml").write_text(WORKFLOW, encoding="utf-8")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import override_settings, setup_test_environment  # noqa: E402

from tests import scale_steps  # noqa: E402
from wfstate.exceptions import WFStateError  # noqa: E402
from wfstate.state import parse_time  # noqa: E402
from wfstate.stores import get_store  # noqa: E402
from wfstate.triggers.models import Schedule, ScheduleTick  # noqa: E402

# What this process's settings are without the RQ switches (tests/settings.py): the
# database task backend on its default queue, file locks.
DB_SETTINGS = {
    "TASKS": {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}},
    "WFSTATE": {
        k: v
        for k, v in settings.WFSTATE.items()
        if k not in ("TASK_QUEUE", "LOCK_BACKEND", "STORE")
    },
}


def manage(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env or dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def first_step_start(workflow_id: str, timeout: float = 60) -> datetime:
    """Poll the state file until its first step has started; that step's started_at."""
    store = get_store()
    deadline = time.monotonic() + timeout
    while True:
        try:
            step = store.load(workflow_id).states.get("step")
        except WFStateError:
            step = None  # not written yet
        if step is not None and step.started_at:
            started = parse_time(step.started_at)
            assert started is not None
            return started
        if time.monotonic() > deadline:
            raise SystemExit(f"run {workflow_id}: first step not started within {timeout} s")
        time.sleep(0.001)


def summary(latencies_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered), 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))], 1),
        "min_ms": round(ordered[0], 1),
        "max_ms": round(ordered[-1], 1),
    }


def rq_worker(client: redis.Redis, worker_class: str = "") -> tuple[subprocess.Popen[bytes], str]:
    extra = ["--worker-class", worker_class] if worker_class else []
    name = f"{QUEUE}-w{uuid.uuid4().hex[:6]}"
    worker = manage("rqworker", "--job-class", "django_tasks_rq.Job", *extra, "--name", name, QUEUE)
    deadline = time.monotonic() + 120
    while client.scard(f"rq:workers:{QUEUE}") < 1:
        if time.monotonic() > deadline:
            raise SystemExit("the RQ worker did not register within 120 s")
        time.sleep(0.05)
    return worker, name


def run_ended(workflow_id: str, timeout: float = 60) -> None:
    """Wait until the run's file says it ended."""
    store = get_store()
    deadline = time.monotonic() + timeout
    while not store.load(workflow_id).status.is_final:
        if time.monotonic() > deadline:
            raise SystemExit(f"run {workflow_id} did not end within {timeout} s")
        time.sleep(0.002)


def rq_idle(client: redis.Redis, name: str) -> Callable[[str], None]:
    """After each run: its end, then the RQ worker back to idle (its job's bookkeeping
    and the work horse's exit done), so the next request meets an idle worker."""

    def settle(workflow_id: str) -> None:
        run_ended(workflow_id)
        deadline = time.monotonic() + 60
        while client.hget(f"rq:worker:{name}", "state") != "idle":
            if time.monotonic() > deadline:
                raise SystemExit(f"RQ worker {name} not idle within 60 s")
            time.sleep(0.002)

    return settle


def db_idle(interval: float, rng: random.Random) -> Callable[[str], None]:
    """After each run: its end, then a random part of the poll interval, so a request
    meets ``db_worker`` anywhere in its sleep (it polls again at once after a task)."""

    def settle(workflow_id: str) -> None:
        run_ended(workflow_id)
        time.sleep(0.05 + rng.uniform(0, interval))

    return settle


def bench_post(posts: int, settle: Callable[[str], None]) -> dict[str, Any]:
    admin = get_user_model().objects.get_or_create(
        username="bench", defaults={"is_staff": True, "is_superuser": True}
    )[0]
    client = Client()
    client.force_login(admin)
    latencies = []
    answered = []
    for i in range(-2, posts):  # two warm-up runs: the worker and this process are warm
        began = datetime.now(UTC)
        response = client.post(
            "/api/wfstate/runs/",
            {"workflow_name": "bench_trigger", "inputs": {"n": i}},
            content_type="application/json",
        )
        assert response.status_code == 202, response.content
        replied = datetime.now(UTC)
        workflow_id = response.json()["workflow_id"]
        started = first_step_start(workflow_id)
        if i >= 0:
            latencies.append((started - began).total_seconds() * 1000)
            answered.append((replied - began).total_seconds() * 1000)
        settle(workflow_id)  # the next request meets an idle (and warm) worker
    return {
        **summary(latencies),
        "post_response_median_ms": round(statistics.median(answered), 1),
    }


def bench_ticks(name: str, ticks: int, env: dict[str, str]) -> dict[str, Any]:
    """Fire an ``every: 1s`` schedule for ``ticks`` ticks after two warm-up ticks."""
    scheduler = subprocess.Popen(
        [sys.executable, "manage.py", "run_scheduler", "--interval", "0.2"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert scheduler.stdout is not None
    scheduler.stdout.readline()  # "scheduler started": made after it is up, no backlog
    schedule = Schedule.objects.create(
        name=name, workflow_name="bench_trigger", every_seconds=1, catch_up="all"
    )
    try:
        deadline = time.monotonic() + 60 + ticks * 3
        while ScheduleTick.objects.filter(schedule=schedule).count() < ticks + 2:
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the scheduler fired too few ticks")
            time.sleep(0.05)
    finally:
        stop([scheduler])
    Schedule.objects.filter(pk=schedule.pk).update(enabled=False)
    rows = list(ScheduleTick.objects.filter(schedule=schedule).order_by("tick"))[2 : ticks + 2]
    latencies = [
        (first_step_start(row.workflow_id) - row.tick).total_seconds() * 1000 for row in rows
    ]
    return summary(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=40)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--db-posts", type=int, default=20, help="POSTs per db_worker round")
    parser.add_argument("--db-interval", type=float, default=0.1, help="db_worker poll (s)")
    parser.add_argument(
        "--db-short-interval", type=float, default=0.05, help="short db_worker poll (s)"
    )
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    setup_test_environment()
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    result: dict[str, Any] = {
        "benchmark": "triggers",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": {
            "database": "sqlite",
            "workflow": "one no-op call step",
            "rq": "django_tasks_rq.RQBackend, rqworker (fork per job), Redis locks",
        },
    }
    try:
        worker, name = rq_worker(client)
        try:
            result["post_rq"] = {
                **bench_post(args.posts, rq_idle(client, name)),
                "goal_median_ms": 50,
            }
            result["post_rq"]["goal_met"] = result["post_rq"]["median_ms"] < 50
            result["tick_rq"] = bench_ticks("bench-rq", args.ticks, dict(os.environ))
        finally:
            stop([worker])
        # The same without the fork per job (RQ's SimpleWorker runs jobs in the worker).
        worker, name = rq_worker(client, "rq.worker.SimpleWorker")
        try:
            result["post_rq_simple_worker"] = bench_post(args.posts, rq_idle(client, name))
        finally:
            stop([worker])
        # The database backend: children without the RQ switches (file locks, db_worker);
        # this process's POSTs enqueue to it with the same settings as they have.
        db_env = {k: v for k, v in os.environ.items() if k not in RQ_ENV}
        rng = random.Random(15)
        for key, interval in (("post_db", None), ("post_db_short_poll", args.db_short_interval)):
            poll = ["--interval", str(interval)] if interval is not None else []
            db_worker = manage("db_worker", *poll, "--no-startup-delay", env=db_env)
            try:
                with override_settings(**DB_SETTINGS):
                    result[key] = {
                        "worker_poll_s": interval if interval is not None else "default (1)",
                        **bench_post(args.db_posts, db_idle(interval or 1.0, rng)),
                    }
            finally:
                stop([db_worker])
        db_worker = manage(
            "db_worker", "--interval", str(args.db_interval), "--no-startup-delay", env=db_env
        )
        try:
            result["tick_db"] = {
                "worker_poll_s": args.db_interval,
                **bench_ticks("bench-db", args.ticks, db_env),
            }
        finally:
            stop([db_worker])
    finally:
        scale_steps.delete_rq_queue(client, QUEUE)
        keys = list(client.scan_iter(match=f"{QUEUE}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(TMP, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
