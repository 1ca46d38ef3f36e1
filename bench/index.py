"""What the index costs: the admin changelist at 1,000 and 100,000 runs, and a sync.

    .venv/bin/python bench/index.py [--runs 100000] [--small 1000] [--repeat 15] [--only sync]

* ``changelist``: the median time to render the runs' changelist (first page, a
  status filter, a search) as a logged-in superuser, with ``--small`` runs indexed and
  then with ``--runs``. Target: the large table at most 1.5x the small one.
* ``sync``: ``sync_workflow_index`` over ``--runs`` state files into an empty index,
  against the floor of scanning the directory and parsing every file (``os.scandir``,
  read, ``orjson.loads``) in one loop. Target: at most 1.5x the floor. Also a second sync
  over an index that is already up to date (read and compare only).

Standalone: a temp SQLite database and a temp storage directory under the repository
(the filesystem ``storage/`` lives on), removed at the end. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TMP = Path(tempfile.mkdtemp(prefix=".bench-index-", dir=REPO))
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
os.environ["DJANGO_DEBUG"] = "0"  # no query log kept in memory
os.environ["WFSTATE_DEMO_DB"] = str(TMP / "bench.sqlite3")
os.environ["WFSTATE_STORAGE_DIR"] = str(TMP / "storage")

import django  # noqa: E402

django.setup()

import orjson  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import setup_test_environment  # noqa: E402

from wfstate import index  # noqa: E402
from wfstate.models import WorkflowRun  # noqa: E402
from wfstate.state import StepResult, StepStatus, WorkflowState  # noqa: E402
from wfstate.stores import get_store  # noqa: E402
from wfstate.stores.jsonfile import serialize  # noqa: E402

STATUSES = ["completed", "failed", "running", "cancelled", "pending"]
PAGES = {
    "first_page": {},
    "filtered": {"status__exact": "failed"},
    "search": {"q": "release"},
}


def write_files(start: int, stop: int) -> None:
    """State files as the engine leaves them: three steps with small outputs."""
    store = get_store()
    directory = store.directory  # type: ignore[attr-defined]
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(start, stop):
        state = WorkflowState.new(
            ("release", "deploy", "backup", "report")[i % 4], inputs={"tag": f"v{i}"}
        )
        state.status = STATUSES[i % len(STATUSES)]  # type: ignore[assignment]
        minute = i % 1440
        state.started_at = (
            f"2026-11-{1 + i % 27:02d}T{minute // 60:02d}:{minute % 60:02d}:00.000000Z"
        )
        state.updated_at = state.started_at
        for n, name in enumerate(("build", "test", "publish")):
            state.states[name] = StepResult(
                name=name,
                status=StepStatus.COMPLETED,
                output=f"{name} ok\n",
                stderr="",
                exit_code=0,
                started_at=state.started_at,
                completed_at=state.started_at,
                duration_ms=100 * n,
            )
        state.current_state = "publish"
        state.revision = 7
        (directory / f"{state.workflow_id}.json").write_bytes(serialize(state))


def floor_scan(directory: Path) -> float:
    """Scan the directory and parse every state file, nothing else."""
    started = time.perf_counter()
    parsed = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.endswith(".json"):
                with open(entry.path, "rb") as fh:
                    orjson.loads(fh.read())
                parsed += 1
    assert parsed
    return time.perf_counter() - started


def changelist_times(client: Client, repeat: int) -> dict[str, float]:
    url = "/admin/wfstate/workflowrun/"
    out = {}
    for name, params in PAGES.items():
        client.get(url, params)  # warm-up (templates, caches)
        samples = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url, params)
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200
        out[name] = statistics.median(samples) * 1000
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument(
        "--only",
        choices=("changelist", "sync"),
        help="measure one part (the other's figures are left out)",
    )
    args = parser.parse_args()
    changelist, syncing = args.only != "sync", args.only != "changelist"
    try:
        setup_test_environment()
        call_command("migrate", verbosity=0)
        user = get_user_model().objects.create_superuser("bench", "", "bench")
        client = Client()
        client.force_login(user)
        store = get_store()
        directory: Path = store.directory  # type: ignore[attr-defined]

        write_files(0, args.small)
        result: dict[str, Any] = {
            "benchmark": "index",
            "python": platform.python_version(),
            "database": "sqlite",
            "runs": args.runs,
            "small": args.small,
        }
        ok = True
        if changelist:
            index.sync(store)
            small = changelist_times(client, args.repeat)

        write_files(args.small, args.runs)
        if syncing:
            WorkflowRun.objects.all().delete()
            floor_first = floor_scan(directory)
            report = index.sync(store)
            assert report.created == args.runs, report.as_dict()
            sync_seconds = report.seconds
            floor = min(floor_first, floor_scan(directory))
            resync = index.sync(store)
            assert resync.unchanged == args.runs
            result.update(
                {
                    "sync_s": round(sync_seconds, 3),
                    "floor_scan_parse_s": round(floor, 3),
                    "sync_ratio": round(sync_seconds / floor, 2),
                    "sync_target": 1.5,
                    "resync_unchanged_s": round(resync.seconds, 3),
                    "sync_files_per_s": round(args.runs / sync_seconds),
                }
            )
            ok = ok and result["sync_ratio"] <= result["sync_target"]
        else:
            index.sync(store)
        if changelist:
            large = changelist_times(client, args.repeat)
            result["changelist_ms"] = {
                name: {
                    f"{args.small}": round(small[name], 2),
                    f"{args.runs}": round(large[name], 2),
                    "ratio": round(large[name] / small[name], 2),
                }
                for name in PAGES
            }
            result["changelist_ratio"] = round(max(large[name] / small[name] for name in PAGES), 2)
            result["changelist_target"] = 1.5
            ok = ok and result["changelist_ratio"] <= result["changelist_target"]
        result["ok"] = ok
        print(json.dumps(result, indent=2))
        return 0
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
