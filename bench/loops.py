"""The cost of a loop's iterations: does iteration 10,000 checkpoint as cheaply as iteration 10?

Usage: ``.venv/bin/python bench/loops.py [--iterations 10000] [--plain-steps 10000]``

A ``for_each`` of ``--iterations`` no-op ``call`` iterations runs through the engine
(``Executor`` on a ``JSONFileStore``, no index), with the store's checkpoint calls timed:
an iteration's checkpoint cost is the time spent in ``save()`` (its body step's start)
and ``append_records()`` (its record in the side file). Reported: the median cost over
iterations 10-19 and over the last ten, their ratio (the requirement: at most 2), the
state file's size at both points, and the run's total time. For comparison, a workflow of
``--plain-steps`` no-op steps in a straight line runs the same way: its state document
grows with every step, so its late checkpoints cost more (0 skips it).

The 2x requirement is judged on the checkpoint's CPU time and on the state file's size
(what a checkpoint writes), both free of the disk's latency; wall-clock medians (which
include fsync, whose latency on a shared disk swings by more than 2x from one minute to
the next) are reported beside them as ``loop_wall_within_2x``.

Everything lives in a temp directory on the repository's filesystem (fsyncs on tmpfs
would mean nothing). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.steps import filesystem_of, make_workdir  # noqa: E402

STEP_TARGET = "bench._steps.noop"
WINDOW = 100


def loop_yaml(iterations: int) -> str:
    return (
        "name: bench_loop\nstates:\n  initial: each\n"
        f"  each:\n    type: for_each\n    items: '{{{{ range({iterations}) | list }}}}'\n"
        f"    max_iterations: {iterations}\n    body: [work]\n    on_complete: done\n"
        f"  work: {{type: step, call: {STEP_TARGET}, on_success: each}}\n"
        "  done: {type: terminal}\n"
    )


def plain_yaml(steps: int) -> str:
    lines = ["name: bench_plain", "states:", "  initial: s00000"]
    for i in range(steps):
        nxt = f"s{i + 1:05d}" if i + 1 < steps else "done"
        lines.append(f"  s{i:05d}: {{type: step, call: {STEP_TARGET}, on_success: {nxt}}}")
    lines.append("  done: {type: terminal}")
    return "\n".join(lines) + "\n"


class TimedStore:
    """Wraps a store's checkpoint calls, charging their time to the current iteration."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.costs: list[float] = []  # wall seconds per iteration (or per step)
        self.cpu: list[float] = []  # CPU seconds of the same calls (no waiting on the disk)
        self.sizes: dict[int, int] = {}
        self.current = 0.0
        self.current_cpu = 0.0
        self._orig_save = store.save
        self._orig_append = store.append_records
        store.save = self.save
        store.append_records = self.append_records

    def save(self, state: Any, *, durable: bool = True) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        self._orig_save(state, durable=durable)
        self.current += time.perf_counter() - started
        self.current_cpu += time.thread_time() - cpu

    def append_records(self, workflow_id: str, name: str, data: bytes) -> None:
        started, cpu = time.perf_counter(), time.thread_time()
        self._orig_append(workflow_id, name, data)
        self.current += time.perf_counter() - started
        self.current_cpu += time.thread_time() - cpu

    def close_unit(self, path: Path) -> None:
        """One iteration (or step) ended: keep its cost, note the state file's size."""
        self.costs.append(self.current)
        self.cpu.append(self.current_cpu)
        self.current = self.current_cpu = 0.0
        n = len(self.costs)
        if n in (10, 20) or n % 1000 == 0:
            self.sizes[n] = path.stat().st_size


def _run(workdir: Path, yaml: str, unit_event: str) -> dict[str, Any]:
    from wfstate.definitions import loads_definition
    from wfstate.engine import Executor
    from wfstate.state import RunStatus, WorkflowState
    from wfstate.stores.jsonfile import JSONFileStore

    storage = workdir / f"storage-{unit_event}"
    store = JSONFileStore(storage)
    timed = TimedStore(store)
    definition = loads_definition(yaml)
    state = WorkflowState.new(definition.name)
    path = store.path_for(state.workflow_id)

    def progress(event: dict[str, Any]) -> None:
        if event["event"] == unit_event:
            timed.close_unit(path)

    started = time.perf_counter()
    state = Executor(store, definition, progress=progress).execute(state)
    total = time.perf_counter() - started
    assert state.status == RunStatus.COMPLETED, state.error
    costs, cpu = timed.costs, timed.cpu
    # Windows of WINDOW units from the 10th and ending at the last: medians of fsync
    # latency on a shared disk need more than a handful of samples.
    early, late = statistics.median(costs[9 : 9 + WINDOW]), statistics.median(costs[-WINDOW:])
    early_cpu = statistics.median(cpu[9 : 9 + WINDOW])
    late_cpu = statistics.median(cpu[-WINDOW:])
    return {
        "units": len(costs),
        "total_s": round(total, 3),
        "per_unit_ms": round(total / max(1, len(costs)) * 1000, 4),
        "checkpoint_ms_at_10": round(early * 1000, 4),
        "checkpoint_ms_at_last": round(late * 1000, 4),
        "checkpoint_ratio_last_to_10": round(late / early, 3) if early else None,
        "checkpoint_cpu_ms_at_10": round(early_cpu * 1000, 4),
        "checkpoint_cpu_ms_at_last": round(late_cpu * 1000, 4),
        "checkpoint_cpu_ratio_last_to_10": round(late_cpu / early_cpu, 3) if early_cpu else None,
        "state_file_bytes": {str(k): v for k, v in sorted(timed.sizes.items())},
        "final_state_file_bytes": path.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--plain-steps", type=int, default=10_000)
    args = parser.parse_args()
    workdir = make_workdir()
    try:
        loop = _run(workdir, loop_yaml(args.iterations), "iteration_finished")
        side = sum(
            p.stat().st_size for p in (workdir / "storage-iteration_finished").rglob("*.log")
        )
        loop["side_file_bytes"] = side
        plain = (
            _run(workdir, plain_yaml(args.plain_steps), "step_finished")
            if args.plain_steps
            else None
        )
        result = {
            "benchmark": "loops",
            "filesystem": filesystem_of(workdir),
            "cpus": os.cpu_count(),
            "for_each": loop,
            "plain_steps": plain,
            # Judged on CPU time and bytes written: wall time also measures the disk's
            # mood (fsync latency on a shared disk swings by more than 2x in a minute).
            "loop_within_2x": bool(
                loop["checkpoint_cpu_ratio_last_to_10"] is not None
                and loop["checkpoint_cpu_ratio_last_to_10"] <= 2.0
                and loop["final_state_file_bytes"] <= 2 * loop["state_file_bytes"]["10"]
            ),
            "loop_wall_within_2x": bool(
                loop["checkpoint_ratio_last_to_10"] is not None
                and loop["checkpoint_ratio_last_to_10"] <= 2.0
            ),
            "loop_total_vs_plain": (
                round(loop["total_s"] / plain["total_s"], 3) if plain and plain["total_s"] else None
            ),
        }
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
