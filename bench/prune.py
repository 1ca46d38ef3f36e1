"""What retention costs: ``prune_workflow_runs`` over 100,000 finished runs.

    .venv/bin/python bench/prune.py [--runs 100000] [--keep 1000]

Writes ``--runs`` old finished runs (one in ten with a whole-output side file) and
``--keep`` recent or running ones, indexes them, then prunes with ``--older-than 30d``
and checks that exactly the old ones went (files, side files, sidecars, rows).
Target: the issue's "100,000 runs pruned in minutes", i.e. at most 300 s.

Standalone: a temp SQLite database and a temp storage directory under the repository,
removed at the end. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TMP = Path(tempfile.mkdtemp(prefix=".bench-prune-", dir=REPO))
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
os.environ["DJANGO_DEBUG"] = "0"  # no query log kept in memory
os.environ["WFSTATE_DEMO_DB"] = str(TMP / "bench.sqlite3")
os.environ["WFSTATE_STORAGE_DIR"] = str(TMP / "storage")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402

from wfstate import index, retention  # noqa: E402
from wfstate.models import WorkflowRun  # noqa: E402
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState  # noqa: E402
from wfstate.stores import JSONFileStore, get_store  # noqa: E402
from wfstate.stores.jsonfile import serialize  # noqa: E402

STATUSES = ("completed", "failed", "cancelled")


def write(store: JSONFileStore, status: str, ended: datetime, outputs: bool) -> str:
    state = WorkflowState.new(("release", "deploy", "backup")[len(status) % 3], inputs={"n": 1})
    state.status = RunStatus(status)
    stamp = ended.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    state.started_at = state.updated_at = stamp
    state.completed_at = stamp if state.status.is_final else None
    state.states["build"] = StepResult(name="build", status=StepStatus.COMPLETED, output="ok\n")
    path = store.directory / f"{state.workflow_id}.json"
    path.write_bytes(serialize(state))
    if outputs:
        store.save_output(state.workflow_id, "build", "stdout", b"x" * 4096)
    return state.workflow_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--keep", type=int, default=1_000)
    args = parser.parse_args()
    try:
        call_command("migrate", verbosity=0)
        store = get_store()
        assert isinstance(store, JSONFileStore)
        store.directory.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        started = time.perf_counter()
        for i in range(args.runs):
            write(store, STATUSES[i % 3], now - timedelta(days=40), outputs=i % 10 == 0)
        kept = {
            write(store, "running" if i % 2 else "completed", now - timedelta(days=1), False)
            for i in range(args.keep)
        }
        index.sync(store)
        setup_s = time.perf_counter() - started

        policy = retention.Policy.from_options("30d")
        report = retention.prune(policy, store=store)
        left_files = {p.name[:36] for p in store.directory.iterdir()}
        left_rows = set(WorkflowRun.objects.values_list("workflow_id", flat=True))
        result = {
            "benchmark": "prune",
            "python": platform.python_version(),
            "database": "sqlite",
            "runs": args.runs,
            "kept_runs": args.keep,
            "setup_s": round(setup_s, 2),
            "pruned": len(report.pruned),
            "prune_s": round(report.seconds, 2),
            "runs_per_s": round(len(report.pruned) / report.seconds),
            "target_s": 300,
            "exact": left_files == kept and left_rows == kept,
        }
        result["ok"] = bool(
            result["exact"] and len(report.pruned) == args.runs and report.seconds <= 300
        )
        print(json.dumps(result, indent=2))
        return 0 if result["ok"] else 1
    finally:
        shutil.rmtree(TMP, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
