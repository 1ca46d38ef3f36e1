"""Runs per second with 1, 2 and 4 RQ workers (SPEC §10's multi-worker configuration).

    .venv/bin/python bench/scale.py [--runs 100] [--workers 1,2,4] [--no-index]
                                    [--workflow shell|python]

The deployment of docs/scaling.md on one machine: ``manage.py rqworker`` processes
(django-tasks-rq over the machine's Redis on 127.0.0.1:6379), the run and write locks
in Redis (``LOCK_BACKEND = "redis"``), one storage directory, and the index in a SQLite
file (``--no-index`` leaves it out). The workflow (issue 15's figure) is three shell
steps, each one ``printf`` appended to a log: the figures measure wfstate's own cost
per run (queue, fork of a work horse, locks, checkpoints, index, a step's process)
rather than the work. ``--workflow python`` runs tests/scale_steps.py's three Python
steps of 5 ms instead (the figure of the first build).

For each worker count: start the workers and wait until they are registered, create
``--runs`` runs (pending, not yet enqueued), then time from the first enqueue to the
last run completed. Prints one JSON object: runs per second per worker count and the
ratios to one worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

REDIS_URL = os.environ.get("WFSTATE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
TMP = Path(tempfile.mkdtemp(prefix=".bench-scale-", dir=REPO))
QUEUE = f"wfstate-bench-{uuid.uuid4().hex[:10]}"
# Three shell steps; each appends "<RQ worker> <step> <run>" to the log with one short
# write on an O_APPEND descriptor (lines of concurrent workers never interleave).
SHELL_STEPS = ("first", "middle", "last")
SHELL_WORKFLOW = (
    """\
name: scale_shell
version: "1"
inputs:
  - {name: log, type: string, required: true}
  - {name: run, type: string, required: true}
states:
  initial: first
"""
    + "".join(
        f"""  {step}:
    type: step
    command: printf '%s {step} %s\\n' "$RQ_WORKER_ID" {{{{ inputs.run }}}} >> {{{{ inputs.log }}}}
    on_success: {following}
"""
        for step, following in zip(SHELL_STEPS, (*SHELL_STEPS[1:], "done"), strict=True)
    )
    + """  done: {type: terminal, status: success}
"""
)

# The test settings' switches build exactly the RQ + Redis-lock configuration, for this
# process and for the workers it starts (they inherit the environment).
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
        "WFSTATE_TEST_TMP": str(TMP),
        "WFSTATE_STORAGE_DIR": str(TMP / "storage"),
        "WFSTATE_TEST_TASKS": "rq",
        "WFSTATE_TEST_RQ_QUEUE": QUEUE,
        "WFSTATE_TEST_REDIS_URL": REDIS_URL,
        "WFSTATE_TEST_LOCK_BACKEND": "redis",
        "WFSTATE_TEST_REDIS_PREFIX": QUEUE,
        "WFSTATE_TEST_WORKFLOW_DIR": str(TMP / "workflows"),
    }
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    parser.add_argument("--no-index", action="store_true", help="INDEX_ON_WRITE off")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per round")
    parser.add_argument("--workflow", choices=("shell", "python"), default="shell")
    return parser.parse_args()


ARGS = parse_args()
os.environ["WFSTATE_INDEX_ON_WRITE"] = "0" if ARGS.no_index else "1"

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.core.management import call_command  # noqa: E402

from tests import scale_steps  # noqa: E402
from wfstate import runs, tasks  # noqa: E402
from wfstate.state import RunStatus  # noqa: E402
from wfstate.stores import get_store  # noqa: E402


def start_workers(count: int, client: redis.Redis) -> list[subprocess.Popen[bytes]]:
    workers = []
    for index in range(count):
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "manage.py",
                    "rqworker",
                    "--job-class",
                    "django_tasks_rq.Job",
                    "--name",
                    f"{QUEUE}-{count}-{index}",
                    "--verbosity",
                    "0",
                    QUEUE,
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    deadline = time.monotonic() + 120
    while client.scard(f"rq:workers:{QUEUE}") < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} workers did not register within 120 s")
        time.sleep(0.05)
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]], client: redis.Redis) -> None:
    for proc in workers:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)  # warm shutdown: idle workers leave at once
    for proc in workers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    while client.scard(f"rq:workers:{QUEUE}"):
        time.sleep(0.05)


def create_runs(log: Path) -> list[str]:
    if ARGS.workflow == "python":
        return [
            runs.create_run("scale", {"log": str(log)})[0].workflow_id for _ in range(ARGS.runs)
        ]
    ids = []
    for n in range(ARGS.runs):
        ids.append(runs.create_run("scale_shell", {"log": str(log), "run": str(n)})[0].workflow_id)
    return ids


def shell_workers_used(log: Path) -> int:
    """Check the shell steps' log (each run's three steps once each); the workers seen."""
    lines = [line.split() for line in log.read_text().splitlines() if line]
    assert len(lines) == 3 * ARGS.runs, f"{len(lines)} step lines for {ARGS.runs} runs"
    steps: dict[str, list[str]] = {}
    for _worker, step, run in lines:
        steps.setdefault(run, []).append(step)
    assert len(steps) == ARGS.runs, "a run is missing from the step log"
    assert all(sorted(s) == sorted(SHELL_STEPS) for s in steps.values()), "a step ran twice"
    return len({worker for worker, _step, _run in lines})


def one_round(count: int, client: redis.Redis) -> dict[str, Any]:
    store = get_store()
    log = TMP / f"steps-{count}.log"
    workers = start_workers(count, client)
    try:
        ids = create_runs(log)
        began = time.perf_counter()
        cpu_before = time.process_time()
        for workflow_id in ids:
            tasks.enqueue_execution(workflow_id)
        # Watched in the order they were enqueued, one file per look: reading every
        # pending run's file every round took CPU from the workers (bench_process_cpu_s).
        pending = list(ids)
        deadline = time.monotonic() + ARGS.timeout
        while pending:
            while pending and store.load(pending[0]).status == RunStatus.COMPLETED:
                pending.pop(0)
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(pending)} runs unfinished after {ARGS.timeout} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - began
        cpu = time.process_time() - cpu_before  # this process's: enqueues and watching
    finally:
        stop_workers(workers, client)
    if ARGS.workflow == "shell":
        used = shell_workers_used(log)
    else:
        per_run = scale_steps.executions(scale_steps.read_log(log))
        assert len(per_run) == ARGS.runs, "a run is missing from the step log"
        assert not scale_steps.overlaps(per_run), "two steps of one run overlapped"
        used = len({s["worker"] for steps in per_run.values() for s in steps})
    return {
        "workers": count,
        "seconds": round(seconds, 3),
        "runs_per_second": round(ARGS.runs / seconds, 2),
        "workers_used": used,
        "bench_process_cpu_s": round(cpu, 3),
    }


def main() -> None:
    counts = [int(n) for n in ARGS.workers.split(",")]
    scale_steps.write_workflow(TMP / "workflows")
    (TMP / "workflows" / "scale_shell.yaml").write_text(SHELL_WORKFLOW, encoding="utf-8")
    call_command("migrate", verbosity=0)
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        rounds = [one_round(count, client) for count in counts]
    finally:
        scale_steps.delete_rq_queue(client, QUEUE)
        keys = list(client.scan_iter(match=f"{QUEUE}:*", count=1000))  # the locks' keys
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(TMP, ignore_errors=True)
    base = rounds[0]["runs_per_second"]
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "config": {
                    "tasks": "django_tasks_rq.RQBackend (rqworker, fork per job)",
                    "lock_backend": "redis",
                    "index": "off" if ARGS.no_index else "sqlite",
                    "workflow": {
                        "shell": "3 shell steps (printf >> log)",
                        "python": "3 call steps x 5 ms",
                    }[ARGS.workflow],
                    "runs_per_round": ARGS.runs,
                },
                "rounds": rounds,
                "speedup_vs_first": {
                    str(r["workers"]): round(r["runs_per_second"] / base, 2) for r in rounds
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
