"""Parked runs cost nothing; waking them is a task like any other (docs/workflows.md).

    .venv/bin/python bench/waiting.py [--runs 10000] [--workers 1,2]

For each worker count: park ``--runs`` runs of a one-step workflow (a ``wait`` for the
signal ``go``, then the end) by executing them in this process, with no worker running;
measure what they hold while parked (processes, run locks held, files and bytes on
disk, index rows, queued tasks); send every one its signal with the workers still
stopped (each signal is a mailbox file plus one queued task); then start the
``manage.py db_worker`` processes (django-tasks' database backend, the demo's, on a
SQLite file) and time from their start to the last run completed.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TMP = Path(tempfile.mkdtemp(prefix=".bench-waiting-", dir=REPO))

os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DJANGO_DEBUG": "0",
        "PYTHONUNBUFFERED": "1",
        "WFSTATE_TEST_TMP": str(TMP),
        "WFSTATE_STORAGE_DIR": str(TMP / "storage"),
        "WFSTATE_INDEX_ON_WRITE": "1",
        "WFSTATE_TEST_WORKFLOW_DIR": str(TMP / "workflows"),
    }
)

WORKFLOW = """
name: bench_waiting
states:
  initial: approve
  approve:
    type: wait
    signal: go
    schema: {type: object, required: [ok], properties: {ok: {type: boolean}}}
    transitions:
      - when: "signal.payload.ok"
        goto: done
      - goto: refused
  done: {type: terminal, status: success}
  refused: {type: terminal, status: failure}
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per round")
    return parser.parse_args()


ARGS = parse_args()
(TMP / "workflows").mkdir(parents=True)
(TMP / "workflows" / "bench_waiting.yaml").write_text(WORKFLOW)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django_tasks_db.models import DBTaskResult  # noqa: E402

from wfstate import runs  # noqa: E402
from wfstate.models import WorkflowRun  # noqa: E402
from wfstate.state import RunStatus  # noqa: E402
from wfstate.stores import get_store, reset_store  # noqa: E402


def disk_usage(path: Path) -> tuple[int, int]:
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            files += 1
            size += os.lstat(os.path.join(root, name)).st_size
    return files, size


def children() -> list[int]:
    """Live child processes of this one (none while runs are parked)."""
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me and fields[0] != "Z":
            found.append(int(entry))
    return found


def start_workers(count: int) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "db_worker",
                "--no-reload",
                "--no-startup-delay",
                "--interval",
                "0.05",
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for proc in workers:
        proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def round_for(workers: int) -> dict[str, Any]:
    # Each round on a fresh storage directory, index and queue.
    WorkflowRun.objects.all().delete()
    DBTaskResult.objects.all().delete()
    shutil.rmtree(TMP / "storage", ignore_errors=True)
    reset_store()  # it remembers having made its directory
    store = get_store()

    started = time.perf_counter()
    ids = []
    for _ in range(ARGS.runs):
        state = runs.start_run("bench_waiting")
        assert state.status == RunStatus.WAITING, state.status
        ids.append(state.workflow_id)
    park_seconds = time.perf_counter() - started

    files, size = disk_usage(TMP / "storage")
    locks_held = sum(1 for wid in ids if store.run_lock_owner(wid) is not None)
    parked = {
        "runs_parked": ARGS.runs,
        "park_seconds": round(park_seconds, 2),
        "parked_per_second": round(ARGS.runs / park_seconds, 1),
        "child_processes": len(children()),
        "run_locks_held": locks_held,
        "files": files,
        "bytes_on_disk": size,
        "bytes_per_run": round(size / ARGS.runs),
        "index_rows_waiting": WorkflowRun.objects.filter(status="waiting").count(),
        "queued_tasks": DBTaskResult.objects.count(),
    }

    started = time.perf_counter()
    for wid in ids:
        runs.signal_run(wid, "go", {"ok": True}, sender={"kind": "python", "user": "bench"})
    signal_seconds = time.perf_counter() - started

    procs = start_workers(workers)
    started = time.perf_counter()
    try:
        pending = set(ids)
        deadline = time.monotonic() + ARGS.timeout
        while pending:
            if time.monotonic() > deadline:
                raise SystemExit(f"{len(pending)} runs not completed within {ARGS.timeout}s")
            done = set(
                WorkflowRun.objects.filter(
                    workflow_id__in=list(pending)[:5000], status="completed"
                ).values_list("workflow_id", flat=True)
            )
            pending -= done
            if pending:
                time.sleep(0.2)
        complete_seconds = time.perf_counter() - started
    finally:
        stop_workers(procs)
    # The index says completed: the files are the truth, check a sample of them.
    for wid in ids[:: max(1, len(ids) // 100)]:
        assert store.load(wid).status == RunStatus.COMPLETED
    return {
        "workers": workers,
        "parked": parked,
        "signal_seconds": round(signal_seconds, 2),
        "signals_per_second": round(ARGS.runs / signal_seconds, 1),
        "complete_seconds": round(complete_seconds, 2),
        "runs_completed_per_second": round(ARGS.runs / complete_seconds, 1),
    }


def main() -> None:
    call_command("migrate", verbosity=0)
    try:
        rounds = []
        for n in ARGS.workers.split(","):
            rounds.append(round_for(int(n)))
            # Each round as it ends, on stderr: a long run that is cut short keeps these.
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(
        json.dumps(
            {
                "benchmark": "waiting",
                "runs": ARGS.runs,
                "task_backend": "django_tasks_db.DatabaseBackend (SQLite)",
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "rounds": rounds,
            }
        )
    )


if __name__ == "__main__":
    main()
