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
* ``live``: ``save()`` of a state that changes between saves as a live run's does: the
  finished steps stay, and the step in flight gets new output every round (a line more,
  its oldest line dropped, so the size holds), a new ``attempt`` and ``duration_ms``.
  The change is made just before the clock starts (a run's step makes it between two
  checkpoints); its own time is ``change_p50_ms``.
* ``cpu``: ``save()``'s own work with the durable write taken out (lock, serialize,
  bookkeeping; ``atomic_write`` replaced by a no-op), timed apart in tight loops of the
  live state: what a checkpoint adds to the floor on the caller's thread.

Targets (issue 15): ``save_p50 / F1_p50`` and ``live_p50 / F1_p50`` <= 1.10 at both sizes.

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
from wfstate.stores import jsonfile  # noqa: E402
from wfstate.stores.jsonfile import JSONFileStore, serialize  # noqa: E402

TARGET = 1.10

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


class LiveRun:
    """A state of about ``size`` bytes whose last step is in flight: each ``advance()``
    gives it new output (one line more, the oldest dropped), as a live run's would."""

    def __init__(self, size: int) -> None:
        self.state = make_state(size)
        self.lines = [f"line {i} of the output in flight\n" for i in range(40)]
        self.step = StepResult(name="in_flight", status=StepStatus.RUNNING, output="")
        self.state.states["in_flight"] = self.step
        self.round = 0

    def advance(self) -> WorkflowState:
        self.round += 1
        self.lines.append(f"line {self.round + 40} of the output in flight\n")
        del self.lines[0]
        self.step.output = "".join(self.lines)
        self.step.attempt = 1 + self.round % 3
        self.step.duration_ms = self.round * 7
        return self.state


def cpu_us(store: JSONFileStore, live: LiveRun, loops: int = 400, repeat: int = 7) -> float:
    """``save()`` of the live state without the durable write: microseconds, best of."""
    real = jsonfile.atomic_write
    jsonfile.atomic_write = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        best = float("inf")
        for _ in range(repeat):
            began = time.perf_counter()
            for _ in range(loops):
                store.save(live.advance())
            best = min(best, (time.perf_counter() - began) / loops)
    finally:
        jsonfile.atomic_write = real  # type: ignore[assignment]
    return round(best * 1e6, 1)


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
        prepare: dict[str, Callable[[], object]] = {}
        lives: dict[str, LiveRun] = {}
        for label, size in SIZES.items():
            live = lives[label] = LiveRun(size)
            store.save(live.state)
            # The change comes before the clock starts: a run's step changes its state
            # between two checkpoints, the checkpoint is the save (the change's own time
            # is reported apart, as ``change_p50_ms``).
            prepare[f"{label}/live"] = live.advance
            series[f"{label}/live"] = lambda s=live.state: store.save(s)
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
        changes: dict[str, list[float]] = {name: [] for name in prepare}
        rng = random.Random(1)
        names = list(series)
        for round_ in range(args.warmup + args.n):
            rng.shuffle(names)
            for name in names:
                if name in prepare:
                    began = time.perf_counter()
                    prepare[name]()
                    elapsed = time.perf_counter() - began
                    if round_ >= args.warmup:
                        changes[name].append(elapsed * 1000)
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
            for kind in ("F1", "F1+backup", "save", "live"):
                values = timings[f"{label}/{kind}"]
                figures[f"{kind}_p50_ms"] = round(statistics.median(values), 4)
                figures[f"{kind}_p99_ms"] = round(percentile(values, 0.99), 4)
            figures["bytes"] = len(serialize(make_state(SIZES[label])))
            figures["save_p50/F1_p50"] = round(figures["save_p50_ms"] / figures["F1_p50_ms"], 3)
            figures["live_p50/F1_p50"] = round(figures["live_p50_ms"] / figures["F1_p50_ms"], 3)
            figures["live_bytes"] = len(serialize(lives[label].state))
            figures["change_p50_ms"] = round(statistics.median(changes[f"{label}/live"]), 4)
            figures["live_cpu_us"] = cpu_us(store, lives[label])
            figures["backup_p50/F1_p50"] = round(
                figures["F1+backup_p50_ms"] / figures["F1_p50_ms"], 3
            )
            result[label] = figures
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["target"] = f"save_p50/F1_p50 and live_p50/F1_p50 <= {TARGET} for both sizes"
        result["target_met"] = all(
            result[label][key] <= TARGET  # type: ignore[index]
            for label in SIZES
            for key in ("save_p50/F1_p50", "live_p50/F1_p50")
        )
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
