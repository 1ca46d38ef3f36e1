"""What a checkpoint costs: JSONFileStore.save() against the floor of a durable write.

    .venv/bin/python bench/checkpoint.py [--n 300]

For a 5 KB and a 100 KB state, in one run and interleaved (each round measures every
series once, in a random order, so a noisy neighbour hurts all series alike):

* ``F1``: the floor. Bytes serialized beforehand; create a temp file, write, fsync,
  rename over the target, fsync the directory. No lock, no serialization.
* ``F1+backup``: F1 plus the hard link of the previous version that ``atomic_write``
  keeps to roll back a failed directory fsync (link before the rename, unlink after).
* ``save``: ``JSONFileStore.save(state)``: write lock (open the sidecar, flock, unlock,
  close), serialize, the backup link, the durable write.

Prints one JSON object: p50 and p99 in milliseconds, and ``save_p50 / F1_p50``. The
files live in a temp directory under the repository (the filesystem of ``storage/``),
not in /tmp, which may be a tmpfs where fsync costs nothing. No Django needed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wfstate.state import StepResult, StepStatus, WorkflowState  # noqa: E402
from wfstate.stores.jsonfile import JSONFileStore, serialize  # noqa: E402

SIZES = {"5KB": 5 * 1024, "100KB": 100 * 1024}


def make_state(size: int) -> WorkflowState:
    """A realistic state of about ``size`` bytes: steps with outputs."""
    state = WorkflowState.new("bench", inputs={"tag": "v1.0.0", "dry_run": False})
    i = 0
    while len(serialize(state)) < size:
        state.states[f"step{i}"] = StepResult(
            name=f"step{i}",
            status=StepStatus.COMPLETED,
            output=f"line {i} of the output\n" * 40,
            exit_code=0,
        )
        i += 1
    return state


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def floor_write(directory: Path, target: Path, data: bytes, *, backup: bool) -> None:
    """The durable-write floor, by hand (F1), optionally with the backup link."""
    tmp = directory / f".{target.name}.floor.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    link = directory / f".{target.name}.backup.tmp"
    if backup:
        os.link(target, link)
    os.replace(tmp, target)
    fsync_dir(directory)
    if backup:
        os.unlink(link)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="measured rounds per series")
    parser.add_argument("--warmup", type=int, default=20)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix=".bench-checkpoint-", dir=REPO))
    try:
        store = JSONFileStore(work / "storage", lock_timeout=5.0)
        floor_dir = work / "floor"
        floor_dir.mkdir(mode=0o700)
        series: dict[str, Callable[[], None]] = {}
        for label, size in SIZES.items():
            state = make_state(size)
            store.save(state)
            data = serialize(state)
            target = floor_dir / f"{label}.json"
            target.write_bytes(data)
            series[f"{label}/F1"] = lambda d=data, t=target: floor_write(
                floor_dir, t, d, backup=False
            )
            series[f"{label}/F1+backup"] = lambda d=data, t=target: floor_write(
                floor_dir, t, d, backup=True
            )
            series[f"{label}/save"] = lambda s=state: store.save(s)

        timings: dict[str, list[float]] = {name: [] for name in series}
        rng = random.Random(1)
        names = list(series)
        for round_ in range(args.warmup + args.n):
            rng.shuffle(names)
            for name in names:
                began = time.perf_counter()
                series[name]()
                elapsed = time.perf_counter() - began
                if round_ >= args.warmup:
                    timings[name].append(elapsed * 1000)

        result: dict[str, object] = {
            "benchmark": "checkpoint",
            "command": ".venv/bin/python bench/checkpoint.py",
            "rounds": args.n,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "directory": str(work.parent),
        }
        for label in SIZES:
            figures: dict[str, float] = {}
            for kind in ("F1", "F1+backup", "save"):
                values = timings[f"{label}/{kind}"]
                figures[f"{kind}_p50_ms"] = round(statistics.median(values), 4)
                figures[f"{kind}_p99_ms"] = round(percentile(values, 0.99), 4)
            figures["bytes"] = len(serialize(make_state(SIZES[label])))
            figures["save_p50/F1_p50"] = round(figures["save_p50_ms"] / figures["F1_p50_ms"], 3)
            figures["backup_p50/F1_p50"] = round(
                figures["F1+backup_p50_ms"] / figures["F1_p50_ms"], 3
            )
            result[label] = figures
        result["target"] = "save_p50/F1_p50 <= 1.3 for both sizes"
        result["target_met"] = all(
            result[label]["save_p50/F1_p50"] <= 1.3  # type: ignore[index]
            for label in SIZES
        )
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
