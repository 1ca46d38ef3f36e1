"""What the REST API costs: listing runs at 1,000 and 100,000, and starting runs.

    .venv/bin/python bench/api.py [--runs 100000] [--small 1000] [--repeat 15] [--start 200]

* ``list``: the median time of ``GET runs/`` (first page of 50, a status filter, a
  workflow filter, a search by id prefix, and a page deep in the list) as an admin,
  with ``--small`` runs indexed and then with ``--runs``. Target: the large index at
  most 1.5x the small one for the first page and the filters.
* ``start``: ``--start`` runs of a one-step workflow (a no-op ``call`` step) started
  through ``POST runs/`` one after the other, executed by ONE ``manage.py db_worker``
  process: requests accepted per second, and runs completed per second from the first
  request to the last run's completion (the worker polls every ``--interval`` s).

Standalone: a temp SQLite database, storage directory and settings module under the
repository (the filesystem ``storage/`` lives on), removed at the end. Requests go
through Django's test client in this process (no HTTP server in the measurement).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TMP = Path(tempfile.mkdtemp(prefix=".bench-api-", dir=REPO))
(TMP / "workflows").mkdir()
(TMP / "workflows" / "bench_api.yaml").write_text(
    """
name: bench_api
version: "1.0"
inputs:
  - {name: n, type: integer, default: 0}
states:
  initial: step
  step: {type: step, call: bench._steps.noop, on_success: done, on_failure: failed}
  done: {type: terminal, status: success}
  failed: {type: terminal, status: failure}
"""
)
(TMP / "bench_api_settings.py").write_text(
    f"""
from project.settings import *  # noqa: F403
from project.settings import WFSTATE

DEBUG = False
DATABASES["default"]["NAME"] = {str(TMP / "bench.sqlite3")!r}  # noqa: F405
WFSTATE = {{
    **WFSTATE,
    "STORAGE_DIR": {str(TMP / "storage")!r},
    "WORKFLOW_DIRS": [{str(TMP / "workflows")!r}],
}}
"""
)
sys.path[:0] = [str(REPO), str(TMP)]
os.environ["DJANGO_SETTINGS_MODULE"] = "bench_api_settings"

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from wfstate.models import WorkflowRun  # noqa: E402

API = "/api/wfstate/"
NAMES = ("release", "deploy", "backup", "report")
STATUSES = ("completed", "failed", "running", "cancelled", "pending")


def add_rows(start: int, stop: int) -> None:
    """Index rows as the index leaves them (the list never reads the files)."""
    base = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[WorkflowRun] = []
    for i in range(start, stop):
        started = base + timedelta(seconds=37 * i)
        batch.append(
            WorkflowRun(
                # Spread like real UUID4s (deterministic): an id prefix then matches one
                # run, as it does in real life, not thousands of zero-led ids.
                workflow_id=str(
                    uuid.UUID(
                        bytes=hashlib.blake2b(i.to_bytes(8, "big"), digest_size=16).digest(),
                        version=4,
                    )
                ),
                workflow_name=NAMES[i % 4],
                workflow_version="1.0",
                status=STATUSES[i % 5],
                current_state="publish",
                started_at=started,
                updated_at=started + timedelta(seconds=30),
                completed_at=started + timedelta(seconds=30),
                duration_ms=30000,
                steps_done=3,
                steps_total=3,
                revision=8,
            )
        )
        if len(batch) == 5000:
            WorkflowRun.objects.bulk_create(batch)
            batch = []
    WorkflowRun.objects.bulk_create(batch)


def median_ms(client: Client, url: str, repeat: int) -> float:
    for _ in range(3):
        assert client.get(url).status_code == 200, url
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, (url, response.content[:200])
    return round(statistics.median(times), 2)


def list_queries(count: int) -> dict[str, str]:
    some_id = WorkflowRun.objects.order_by("id").values_list("workflow_id", flat=True)[count // 2]
    return {
        "first_page": "runs/",
        "status_filter": "runs/?status=failed",
        "workflow_filter": "runs/?workflow_name=deploy",
        "search_id_prefix": f"runs/?search={some_id[:13]}",
        "page_10": "runs/?page=10",
    }


def bench_list(client: Client, small: int, large: int, repeat: int) -> dict[str, Any]:
    add_rows(0, small)
    at_small = {k: median_ms(client, API + q, repeat) for k, q in list_queries(small).items()}
    add_rows(small, large)
    at_large = {k: median_ms(client, API + q, repeat) for k, q in list_queries(large).items()}
    ratios = {k: round(at_large[k] / at_small[k], 2) for k in at_small}
    return {
        f"ms_at_{small}": at_small,
        f"ms_at_{large}": at_large,
        "ratio": ratios,
        "target_ratio": 1.5,
        "target_met": all(ratios[k] <= 1.5 for k in ratios),
    }


def bench_start(client: Client, n: int, interval: float) -> dict[str, Any]:
    WorkflowRun.objects.all().delete()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TMP)])}
    worker = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "db_worker",
            "--interval",
            str(interval),
            "--no-startup-delay",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def wait_completed(count: int, timeout: float = 600) -> None:
            deadline = time.monotonic() + timeout
            while WorkflowRun.objects.filter(status="completed").count() < count:
                failed = WorkflowRun.objects.exclude(status__in=("pending", "running", "completed"))
                assert not failed.exists(), list(failed.values("workflow_id", "status", "error"))
                assert time.monotonic() < deadline, "runs did not complete in time"
                time.sleep(0.005)

        def start(i: int) -> None:
            response = client.post(
                API + "runs/",
                {"workflow_name": "bench_api", "inputs": {"n": i}},
                content_type="application/json",
            )
            assert response.status_code == 202, response.content

        start(-1)  # warm-up: the worker is up and has executed one run
        wait_completed(1)
        t0 = time.perf_counter()
        for i in range(n):
            start(i)
        accepted = time.perf_counter() - t0
        wait_completed(n + 1)
        finished = time.perf_counter() - t0
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    return {
        "runs": n,
        "workers": 1,
        "worker_poll_s": interval,
        "post_accepted_per_s": round(n / accepted, 1),
        "post_ms_mean": round(accepted / n * 1000, 2),
        "completed_per_s": round(n / finished, 1),
        "seconds_to_complete_all": round(finished, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.05, help="db_worker poll (s)")
    args = parser.parse_args()
    try:
        call_command("migrate", verbosity=0, interactive=False)
        setup_test_environment()
        admin = get_user_model().objects.create_superuser("bench", "b@example.com", "bench")
        client = Client()
        client.force_login(admin)
        result = {
            "benchmark": "api",
            "python": platform.python_version(),
            "django": django.get_version(),
            "database": "sqlite",
            "list": bench_list(client, args.small, args.runs, args.repeat),
            "start": bench_start(client, args.start, args.interval) if args.start else None,
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
