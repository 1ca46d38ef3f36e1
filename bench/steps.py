"""Per-step cost of wfstate, against DBOS Transact on SQLite and the F1 floor.

Usage: ``.venv/bin/python bench/steps.py [--steps 500] [--repeat 5] [--no-strace]``

One workflow of ``--steps`` no-op ``call`` steps, measured in the same process as:

* ``wfstate_default``: ``wfstate.runs.start_run`` with the default settings
  (``INDEX_ON_WRITE`` True, the index in a migrated SQLite database);
* ``wfstate_engine_only``: the same with ``INDEX_ON_WRITE`` False;
* ``dbos``: DBOS Transact with a SQLite system database, one ``@DBOS.workflow`` calling a
  ``@DBOS.step`` no-op ``--steps`` times;
* ``f1_floor``: by hand, one durable atomic replacement per step of the bytes a wfstate
  state of that step's size serialises to (pre-serialised before timing): temp file,
  write, fsync, rename, directory fsync. Nothing can checkpoint a state durably for less.

Everything lives in a temp directory on the repository's filesystem (renames and fsyncs
on tmpfs would mean nothing). Measurements are interleaved (default, engine-only, DBOS,
floor, then again) and medians reported. ``fsyncs_per_step`` counts ``os.fsync`` calls
during one run; with strace available, ``syscall_fsyncs_per_step`` also counts
fsync/fdatasync system calls (SQLite's included) in child processes, as the difference
between a run of ``--steps`` and one of a fifth of that, so set-up costs cancel out.

Prints one JSON object on stdout; ``--profile`` prints a cProfile of one default run to
stderr as well.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

WORKFLOW = "bench_noop"
STEP_TARGET = "bench._steps.noop"


# --- set-up -----------------------------------------------------------------------------


def make_workdir() -> Path:
    """A temp directory on the repository's filesystem (the system one if it is that)."""
    repo_dev = os.stat(REPO).st_dev
    system = Path(tempfile.gettempdir())
    parent = system if os.stat(system).st_dev == repo_dev else REPO
    path = Path(tempfile.mkdtemp(prefix=".wfstate-bench-", dir=parent))
    assert os.stat(path).st_dev == repo_dev
    return path


def filesystem_of(path: Path) -> str:
    """``<fstype> <device>`` of the mount holding ``path`` (from /proc/mounts)."""
    best, found = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            device, mount, fstype = line.split()[:3]
            if str(path).startswith(mount) and len(mount) >= len(best):
                best, found = mount, f"{fstype} {device}"
    return found


def write_workflow(directory: Path, steps: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {WORKFLOW}", 'version: "1"', "states:", "  initial: s0000"]
    for i in range(steps):
        nxt = f"s{i + 1:04d}" if i + 1 < steps else "done"
        lines.append(f"  s{i:04d}: {{type: step, call: {STEP_TARGET}, on_success: {nxt}}}")
    lines.append("  done: {type: terminal, status: success}")
    (directory / f"{WORKFLOW}.yaml").write_text("\n".join(lines) + "\n")


def setup_django(workdir: Path, steps: int) -> None:
    import django
    from django.conf import settings
    from django.core.management import call_command

    write_workflow(workdir / "workflows", steps)
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench",
        USE_TZ=True,
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "wfstate"],
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(workdir / "db.sqlite3"),
                # As the demo project's: wait for locks rather than fail.
                "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
            }
        },
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        # Defaults for everything but where the files go.
        WFSTATE={"STORAGE_DIR": workdir / "storage", "WORKFLOW_DIRS": [workdir / "workflows"]},
    )
    django.setup()
    call_command("migrate", verbosity=0)


def set_index(enabled: bool) -> None:
    from django.conf import settings

    # wfstate.conf reads settings.WFSTATE on every access.
    settings.WFSTATE["INDEX_ON_WRITE"] = enabled


# --- the contenders ---------------------------------------------------------------------


def run_wfstate(steps: int, *, index: bool, cpu: list[float] | None = None) -> float:
    """Seconds for one run through the real engine (created, executed, finished).

    ``cpu`` gets the process CPU seconds of the run appended (the index thread's too).
    """
    from wfstate import runs
    from wfstate.models import WorkflowRun

    set_index(index)
    cpu_started = time.process_time()
    started = time.perf_counter()
    state = runs.start_run(WORKFLOW)
    elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append(time.process_time() - cpu_started)
    if str(state.status) != "completed" or state.steps_done < steps:
        raise SystemExit(f"wfstate run ended {state.status}: {state.error}")
    if index:
        row = WorkflowRun.objects.get(workflow_id=state.workflow_id)
        if row.status != "completed" or row.revision != state.revision:
            raise SystemExit(f"index row behind its file: {row.status} r{row.revision}")
    runs.delete_run(state.workflow_id)  # same directory size for every measurement
    return elapsed


def run_dbos(steps: int) -> float:
    from bench import _dbos_app

    started = time.perf_counter()
    result = _dbos_app.noop_workflow(steps)
    elapsed = time.perf_counter() - started
    assert result == steps
    return elapsed


def floor_payloads(steps: int) -> list[bytes]:
    """What wfstate writes at each step boundary, by size: its state with 1..n steps.

    Built from a real run's final state, the last step put back in flight.
    """
    from wfstate import runs
    from wfstate.state import RunStatus, StepStatus, WorkflowState
    from wfstate.stores.jsonfile import serialize

    set_index(False)
    final = runs.start_run(WORKFLOW)
    runs.delete_run(final.workflow_id)
    document = final.to_dict()
    names = [n for n in final.states if n != "done"]
    payloads = []
    for i in range(1, steps + 1):
        state = WorkflowState.from_dict(document)
        state.states = {n: state.states[n] for n in names[:i]}
        last = state.states[names[i - 1]]
        last.status, last.completed_at, last.duration_ms = StepStatus.RUNNING, None, None
        state.current_state = names[i - 1]
        state.status, state.completed_at = RunStatus.RUNNING, None
        payloads.append(serialize(state))
    return payloads


def run_floor(payloads: list[bytes], directory: Path) -> float:
    """One durable atomic replacement per step, written by hand."""
    directory.mkdir(exist_ok=True)
    target = directory / "floor.json"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    started = time.perf_counter()
    for i, data in enumerate(payloads):
        tmp = directory / f".floor.json.{i}.tmp"
        fd = os.open(tmp, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return time.perf_counter() - started


# --- the machine --------------------------------------------------------------------------


def fsync_latency(directory: Path, rounds: int = 200) -> dict[str, float]:
    """Median microseconds of an fsync after a 4 KiB write, and of a directory fsync."""
    directory.mkdir(exist_ok=True)
    path = directory / "probe"
    block = os.urandom(4096)
    file_times, dir_times = [], []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for _ in range(rounds):
            os.pwrite(fd, block, 0)
            t0 = time.perf_counter()
            os.fsync(fd)
            file_times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    for i in range(rounds):
        other = directory / f"probe.{i}"
        os.replace(path, other)
        path = other
        dfd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
        try:
            t0 = time.perf_counter()
            os.fsync(dfd)
            dir_times.append(time.perf_counter() - t0)
        finally:
            os.close(dfd)
    return {
        "file_4k_write_us": round(statistics.median(file_times) * 1e6, 1),
        "dir_after_rename_us": round(statistics.median(dir_times) * 1e6, 1),
    }


@contextlib.contextmanager
def counting_fsyncs() -> Iterator[list[int]]:
    """Count ``os.fsync`` calls (wfstate's stores call it through the ``os`` module)."""
    count = [0]
    real = os.fsync

    def fsync(fd: Any) -> None:
        count[0] += 1
        real(fd)

    os.fsync = fsync
    try:
        yield count
    finally:
        os.fsync = real


# --- syscall counts under strace (child processes) ---------------------------------------------

CHILD_MODES = ("wfstate_default", "wfstate_engine_only", "dbos", "f1_floor")


def child(mode: str, steps: int) -> None:
    """Set up and run one measurement of ``mode``: the process strace counts."""
    workdir = make_workdir()
    try:
        setup_django(workdir, steps)
        if mode == "dbos":
            from bench import _dbos_app

            _dbos_app.launch(str(workdir / "dbos.sqlite"))
            try:
                run_dbos(steps)
            finally:
                _dbos_app.destroy()
        elif mode == "f1_floor":
            # The payloads come from a wfstate run, whose fsyncs are not the floor's.
            real_fsync, os.fsync = os.fsync, lambda fd: None
            try:
                payloads = floor_payloads(steps)
            finally:
                os.fsync = real_fsync
            run_floor(payloads, workdir / "floor")
        else:
            run_wfstate(steps, index=mode == "wfstate_default")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def strace_fsyncs(mode: str, steps: int) -> int | None:
    """fsync + fdatasync system calls of a child process running ``mode`` once."""
    with tempfile.NamedTemporaryFile(suffix=".strace") as out:
        cmd = ["strace", "-f", "-qq", "-c", "-o", out.name, "-e", "trace=fsync,fdatasync",
               sys.executable, __file__, "--child", mode, "--steps", str(steps)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            return None
        total = 0
        for line in Path(out.name).read_text().splitlines():
            match = re.match(
                r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(fsync|fdatasync)$", line
            )
            if match:
                total += int(match.group(1))
        return total


def syscall_fsyncs(steps: int) -> dict[str, float] | None:
    if shutil.which("strace") is None:
        return None
    small = max(1, steps // 5)
    result = {}
    for mode in CHILD_MODES:
        big, little = strace_fsyncs(mode, steps), strace_fsyncs(mode, small)
        if big is None or little is None:
            return None  # ptrace not allowed here, most likely
        result[mode] = round((big - little) / (steps - small), 2)
    return result


# --- the benchmark -----------------------------------------------------------------------------


def per_step_us(seconds: list[float], steps: int) -> float:
    return round(statistics.median(seconds) / steps * 1e6, 1)


def profile_default_run(steps: int) -> None:
    profiler = cProfile.Profile()
    set_index(True)
    profiler.enable()
    run_wfstate(steps, index=True)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
    print(text.getvalue(), file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-strace", action="store_true", help="skip the syscall counts")
    parser.add_argument("--profile", action="store_true", help="cProfile one default run")
    parser.add_argument("--child", choices=CHILD_MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    steps = args.steps
    if args.child:
        child(args.child, steps)
        return

    workdir = make_workdir()
    try:
        setup_django(workdir, steps)
        from bench import _dbos_app

        _dbos_app.launch(str(workdir / "dbos.sqlite"))
        try:
            payloads = floor_payloads(steps)
            # Warm up every contender once (imports, caches, the DBOS schema).
            run_wfstate(steps, index=True)
            run_wfstate(steps, index=False)
            run_dbos(steps)
            run_floor(payloads, workdir / "floor")
            with counting_fsyncs() as default_count:
                run_wfstate(steps, index=True)
            with counting_fsyncs() as engine_count:
                run_wfstate(steps, index=False)

            times: dict[str, list[float]] = {m: [] for m in CHILD_MODES}
            cpu: dict[str, list[float]] = {"wfstate_default": [], "wfstate_engine_only": []}
            contenders: dict[str, Callable[[], float]] = {
                "wfstate_default": lambda: run_wfstate(
                    steps, index=True, cpu=cpu["wfstate_default"]
                ),
                "wfstate_engine_only": lambda: run_wfstate(
                    steps, index=False, cpu=cpu["wfstate_engine_only"]
                ),
                "dbos": lambda: run_dbos(steps),
                "f1_floor": lambda: run_floor(payloads, workdir / "floor"),
            }
            for _ in range(args.repeat):
                for name, run in contenders.items():
                    times[name].append(run())
            if args.profile:
                profile_default_run(steps)
            latency = fsync_latency(workdir / "probe")
        finally:
            _dbos_app.destroy()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    us = {name: per_step_us(values, steps) for name, values in times.items()}
    import dbos
    import django

    report = {
        "steps": steps,
        "repeat": args.repeat,
        "filesystem": filesystem_of(workdir),
        "per_step_us": us,
        # CPU time of the process per step: the engine's own work, what fsync waits hide.
        "wfstate_cpu_per_step_us": {name: per_step_us(v, steps) for name, v in cpu.items()},
        "runs_s": {name: [round(v, 4) for v in values] for name, values in times.items()},
        "ratio_wfstate_default_to_dbos": round(us["wfstate_default"] / us["dbos"], 3),
        "ratio_wfstate_engine_only_to_dbos": round(us["wfstate_engine_only"] / us["dbos"], 3),
        "ratio_wfstate_default_to_f1": round(us["wfstate_default"] / us["f1_floor"], 3),
        "ratio_wfstate_engine_only_to_f1": round(us["wfstate_engine_only"] / us["f1_floor"], 3),
        "target_met": us["wfstate_default"] <= us["dbos"],
        "fsyncs_per_step": {
            "wfstate_default": round(default_count[0] / steps, 3),
            "wfstate_engine_only": round(engine_count[0] / steps, 3),
            "f1_floor": 2.0,
        },
        "syscall_fsyncs_per_step": None if args.no_strace else syscall_fsyncs(steps),
        "fsync_latency_us": latency,
        "state_bytes_last_step": len(payloads[-1]),
        "versions": {
            "python": sys.version.split()[0],
            "django": django.get_version(),
            "dbos": getattr(dbos, "__version__", None) or _dist_version("dbos"),
        },
    }
    print(json.dumps(report, indent=2))


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
