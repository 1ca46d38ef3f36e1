"""Steps and helpers of the scale-out tests (tests/test_scale.py) and bench/scale.py.

Each step appends what it did to a side log shared by every worker: one JSON line per
event, written with a single ``write(2)`` on an ``O_APPEND`` descriptor, so lines of
concurrent workers never interleave. The log is the witness of who executed which step
of which run, when: from it the tests prove that no two steps of a run overlapped (one
executor per run) and that nothing was lost or run twice.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

# The workflow the scale tests and the benchmark run: three Python steps. ``gate`` makes
# a step wait (polling, up to a minute) until that file exists: the kill test holds a
# run in its middle step with it.
WORKFLOW = """\
name: scale
version: "1"
inputs:
  - {name: log, type: string, required: true}
  - {name: gate, type: string, default: ""}
  - {name: nap, type: number, default: 0.005}
states:
  initial: first
  first:
    type: step
    call: tests.scale_steps.record
    with: {log: "{{ inputs.log }}", nap: "{{ inputs.nap }}"}
    on_success: middle
  middle:
    type: step
    call: tests.scale_steps.record
    with: {log: "{{ inputs.log }}", nap: "{{ inputs.nap }}", gate: "{{ inputs.gate }}"}
    on_success: last
  last:
    type: step
    call: tests.scale_steps.record
    with: {log: "{{ inputs.log }}", nap: "{{ inputs.nap }}"}
    on_success: done
  done: {type: terminal, status: success}
"""
STEPS = ("first", "middle", "last")


def write_workflow(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "scale.yaml"
    path.write_text(WORKFLOW, encoding="utf-8")
    return path


def _append(log: str, event: dict[str, Any]) -> None:
    line = orjson.dumps(event) + b"\n"
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one write per line: O_APPEND keeps concurrent lines whole
    finally:
        os.close(fd)


def record(ctx: Any, log: str, nap: float = 0.005, gate: str = "") -> dict[str, Any]:
    """Log the step's start, work a little (or wait at the gate), log its end."""
    event = {
        "run": ctx.workflow_id,
        "step": ctx.state_name,
        "pid": os.getpid(),
        # RQ names the worker of a work horse in its environment (absent elsewhere).
        "worker": os.environ.get("RQ_WORKER_ID", ""),
    }
    start = time.monotonic_ns()  # one clock for every process of this host
    _append(log, {**event, "phase": "start", "t": start})
    if gate:
        deadline = time.monotonic() + 60
        while not os.path.exists(gate) and time.monotonic() < deadline:
            ctx.check_cancelled()
            time.sleep(0.01)
    if nap:
        time.sleep(nap)
    end = time.monotonic_ns()
    _append(log, {**event, "phase": "end", "t": end, "start": start})
    return {"pid": event["pid"], "worker": event["worker"]}


def read_log(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line]


def executions(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per run, every finished step execution ``{step, pid, worker, start, end}``."""
    per_run: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event["phase"] == "end":
            per_run[event["run"]].append(
                {
                    "step": event["step"],
                    "pid": event["pid"],
                    "worker": event["worker"],
                    "start": event["start"],
                    "end": event["t"],
                }
            )
    return dict(per_run)


def overlaps(per_run: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Descriptions of every pair of steps of one run that ran at the same time."""
    found = []
    for run, steps in per_run.items():
        ordered = sorted(steps, key=lambda s: s["start"])
        for before, after in itertools.pairwise(ordered):
            if after["start"] < before["end"]:
                found.append(
                    f"run {run}: {before['step']} (pid {before['pid']}) and "
                    f"{after['step']} (pid {after['pid']}) overlap"
                )
    return found


def delete_rq_queue(client: Any, queue: str) -> None:
    """Delete what RQ keeps in Redis for ``queue``: its registries, jobs and workers.

    For queues (and workers) named uniquely by a test or a benchmark run: nothing of
    another queue is touched, so concurrent runs on one Redis server stay apart.
    """
    keys = list(client.scan_iter(match=f"rq:*{queue}*", count=1000))
    job_ids: set[str] = set()
    for key in keys:
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "zset":
            job_ids.update(client.zrange(key, 0, -1))
        elif kind == "list":
            job_ids.update(client.lrange(key, 0, -1))
    for job_id in job_ids:
        job = job_id.decode() if isinstance(job_id, bytes) else job_id
        job = job.split(":", 1)[0]  # the started registry holds "<job id>:<execution id>"
        keys += [f"rq:job:{job}", f"rq:results:{job}", f"rq:executions:{job}"]
    if keys:
        client.delete(*keys)
    client.srem("rq:queues", f"rq:queue:{queue}")
    workers = [w for w in client.smembers("rq:workers") if queue in str(w)]
    if workers:
        client.srem("rq:workers", *workers)
