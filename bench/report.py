"""Run every benchmark and print one table: each figure next to its target.

    .venv/bin/python bench/report.py [--only checkpoint,steps] [--quick] [--runs 3]
                                     [--json results.json] [--from results.json]
                                     [--write-doc]

Each benchmark (bench/<name>.py) runs in its own process and prints one JSON object;
this script reads it, picks the figures issue 15 sets targets for, and prints them in
one table with the machine they came from (CPUs, load average before and after, the
filesystem of the repository). ``--runs N`` runs each benchmark N times and shows every
run's figure and their median (the acceptance is the median of three on a quiet
machine). ``--quick`` passes smaller sizes (a smoke run: the figures are not the ones
of the targets). ``--json`` keeps the raw objects; ``--from`` prints the table of a
kept file again without running anything; ``--write-doc`` puts the table in
docs/performance.md between its ``report:begin`` / ``report:end`` markers.

Exit status: 0 when every benchmark ran (met targets or not), 1 when one failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"

# Arguments of a full run, and of a --quick one.
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "checkpoint": ([], ["--n", "60", "--warmup", "5"]),
    "steps": ([], ["--steps", "100", "--repeat", "3", "--no-strace"]),
    "index": ([], ["--runs", "5000", "--repeat", "5"]),
    "api": ([], ["--runs", "5000", "--repeat", "5", "--start", "30"]),
    "triggers": ([], ["--posts", "10", "--db-posts", "5", "--ticks", "3"]),
    "scale": ([], ["--runs", "30"]),
    "loops": ([], ["--iterations", "500", "--plain-steps", "300"]),
    "prune": ([], ["--runs", "5000", "--keep", "100"]),
}


@dataclass(frozen=True)
class Figure:
    """One row of the table: where the figure is in a benchmark's JSON, and its target."""

    bench: str
    label: str
    get: Callable[[dict[str, Any]], float | None]
    target: str = ""  # "<= 1.10", "< 50", or "" (reported, no target)

    def met(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if not self.target:
            return ""
        op, _, bound = self.target.partition(" ")
        limit = float(bound)
        ok = {"<=": value <= limit, "<": value < limit, ">=": value >= limit}[op]
        return "yes" if ok else "NO"


def _path(*keys: str | int) -> Callable[[dict[str, Any]], float | None]:
    def get(data: dict[str, Any]) -> float | None:
        value: Any = data
        for key in keys:
            if not isinstance(value, dict | list):
                return None
            try:
                value = value[key]  # type: ignore[index]
            except (KeyError, IndexError, TypeError):
                return None
        return value if isinstance(value, int | float) else None

    return get


def _max_of(*keys: str) -> Callable[[dict[str, Any]], float | None]:
    def get(data: dict[str, Any]) -> float | None:
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, dict) or not value:
            return None
        ratios = [v["ratio"] if isinstance(v, dict) else v for v in value.values()]
        numbers = [r for r in ratios if isinstance(r, int | float)]
        return max(numbers) if numbers else None

    return get


def _round(workers: int) -> Callable[[dict[str, Any]], float | None]:
    def get(data: dict[str, Any]) -> float | None:
        for entry in data.get("rounds") or []:
            if entry.get("workers") == workers:
                value = entry.get("runs_per_second")
                return value if isinstance(value, int | float) else None
        return None

    return get


FIGURES = [
    Figure("checkpoint", "save p50 / F1 p50, 5 KB", _path("5KB", "save_p50/F1_p50"), "<= 1.10"),
    Figure("checkpoint", "save p50 / F1 p50, 100 KB", _path("100KB", "save_p50/F1_p50"), "<= 1.10"),
    Figure("checkpoint", "live save / F1, 5 KB", _path("5KB", "live_p50/F1_p50"), "<= 1.10"),
    Figure("checkpoint", "live save / F1, 100 KB", _path("100KB", "live_p50/F1_p50"), "<= 1.10"),
    Figure("checkpoint", "F1 p50 ms, 5 KB", _path("5KB", "F1_p50_ms")),
    Figure("checkpoint", "save CPU us (live), 100 KB", _path("100KB", "live_cpu_us")),
    Figure(
        "steps", "per step vs DBOS (index on)", _path("ratio_wfstate_default_to_dbos"), "<= 0.35"
    ),
    Figure("steps", "per step vs DBOS (index off)", _path("ratio_wfstate_engine_only_to_dbos")),
    Figure("steps", "per step us (index on)", _path("per_step_us", "wfstate_default")),
    Figure("index", "sync / scan+parse floor", _path("sync_ratio"), "<= 1.5"),
    Figure(
        "index",
        "changelist at --runs / at --small, worst page",
        _path("changelist_ratio"),
        "<= 1.15",
    ),
    Figure("api", "GET runs/ at --runs / at --small, worst", _max_of("list", "ratio"), "<= 1.15"),
    Figure("api", "POST runs/ accepted per s (db)", _path("start", "post_accepted_per_s")),
    Figure("triggers", "POST -> first step, RQ, median ms", _path("post_rq", "median_ms"), "< 50"),
    Figure(
        "triggers", "POST -> first step, RQ simple, ms", _path("post_rq_simple_worker", "median_ms")
    ),
    Figure("triggers", "POST -> first step, db_worker 1 s, ms", _path("post_db", "median_ms")),
    Figure(
        "triggers",
        "POST -> first step, db_worker 0.05 s, ms",
        _path("post_db_short_poll", "median_ms"),
    ),
    Figure("triggers", "tick -> first step, db_worker, ms", _path("tick_db", "median_ms")),
    Figure("scale", "runs/s, 1 RQ worker", _round(1)),
    Figure("scale", "runs/s, 4 RQ workers", _round(4)),
    Figure("scale", "4 workers / 1 worker", _path("speedup_vs_first", "4")),
    Figure(
        "loops",
        "loop checkpoint CPU, last / 10th",
        _path("for_each", "checkpoint_cpu_ratio_last_to_10"),
        "<= 2.0",
    ),
    Figure("prune", "prune of --runs runs, s", _path("prune_s"), "<= 300"),
]


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def run_bench(name: str, quick: bool) -> dict[str, Any]:
    """One benchmark in its own process; its JSON, or ``{"error": ...}``."""
    full, small = BENCHES[name]
    command = [sys.executable, str(REPO / "bench" / f"{name}.py"), *(small if quick else full)]
    print(f"running {' '.join(command[1:])} (load {os.getloadavg()[0]:.2f})", file=sys.stderr)
    began = time.monotonic()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = round(time.monotonic() - began, 1)
    try:
        # The object is the last thing printed; anything before it is chatter. A
        # benchmark that missed its own goal may exit 1 and still print its figures.
        text = done.stdout[done.stdout.index("{") :]
        data: dict[str, Any] = json.loads(text)
    except ValueError:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        return {"error": f"exit status {done.returncode}, no JSON: {tail}", "seconds": seconds}
    data["_exit_status"] = done.returncode
    data["_seconds"] = seconds
    data["_load_after"] = round(os.getloadavg()[0], 2)
    return data


def table(results: dict[str, list[dict[str, Any]]], info: dict[str, Any]) -> str:
    runs = max((len(v) for v in results.values()), default=1)
    head = ["benchmark", "figure", *(f"run {i + 1}" for i in range(runs))]
    if runs > 1:
        head.append("median")
    head += ["target", "met"]
    rows = [head]
    for figure in FIGURES:
        if figure.bench not in results:
            continue
        values = [figure.get(data) for data in results[figure.bench]]
        shown = [_fmt(v) for v in values] + [""] * (runs - len(values))
        present = [v for v in values if v is not None]
        value = statistics.median(present) if present else None
        if runs > 1:
            shown.append(_fmt(value))
        rows.append([figure.bench, figure.label, *shown, figure.target, figure.met(value)])
    for bench, datas in results.items():
        for i, data in enumerate(datas):
            if "error" in data:
                rows.append([bench, f"FAILED (run {i + 1})", data["error"].splitlines()[-1][:60]])
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows) for i in range(len(head))]
    lines = [
        f"Machine: {info.get('cpus')} CPUs ({info.get('cpu') or 'unknown'}), "
        f"{info.get('platform')}, Python {info.get('python')}; {info.get('date')}; "
        f"load average before {info.get('load_average_before')}",
        "",
    ]
    for n, row in enumerate(rows):
        lines.append(
            "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + " |"
        )
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    loads = [
        f"{bench} {data.get('_load_after')}"
        for bench, datas in results.items()
        for data in datas
        if "_load_after" in data
    ]
    if loads:
        lines.append("")
        lines.append("Load average (1 min) after each run: " + ", ".join(loads))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def write_doc(text: str) -> None:
    document = DOC.read_text()
    start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
    DOC.write_text(document[:start] + "\n" + text + "\n" + document[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated benchmarks")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each benchmark")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--from", dest="source", type=Path, help="print a kept file's table")
    parser.add_argument("--write-doc", action="store_true", help="update docs/performance.md")
    args = parser.parse_args()

    if args.source:
        kept = json.loads(args.source.read_text())
        info, results = kept["machine"], kept["results"]
    else:
        names = [n for n in args.only.split(",") if n] or list(BENCHES)
        unknown = sorted(set(names) - set(BENCHES))
        if unknown:
            parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
        info = machine()
        results = {name: [] for name in names}
        for _ in range(args.runs):
            for name in names:
                results[name].append(run_bench(name, args.quick))
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        info["quick"] = args.quick
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2))
    text = table(results, info)
    print(text)
    if args.write_doc:
        write_doc(text)
    failed = any("error" in data for datas in results.values() for data in datas)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
