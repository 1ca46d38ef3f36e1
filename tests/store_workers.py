"""Code that runs in child processes of the store tests.

Children are started with the ``spawn`` start method (or as ``python -c``), so what they
run must be importable: it lives here, not in the test modules. Nothing here imports
Django: the store takes its options in its constructor.
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

from wfstate.exceptions import RunLocked, RunNotFound
from wfstate.state import StepResult, StepStatus, WorkflowState
from wfstate.stores.jsonfile import JSONFileStore

# --- the crash loop: a writer that is SIGKILLed at random moments ----------------------

STEPS = 20
STEP_OUTPUT_CHARS = 5000  # 20 x 5 KB: a state file of about 100 KB


def step_output(revision: int, index: int) -> str:
    """The output of step ``index`` at ``revision``: every revision rewrites every byte,
    so a file mixing two writes is caught even if it happens to parse."""
    unit = f"r{revision}s{index}|"
    return (unit * (STEP_OUTPUT_CHARS // len(unit) + 1))[:STEP_OUTPUT_CHARS]


def fill_state(state: WorkflowState, revision: int) -> None:
    """Make ``state`` what revision ``revision`` of the crash test holds."""
    state.inputs["expected_revision"] = revision
    for i in range(STEPS):
        state.states[f"step{i}"] = StepResult(
            name=f"step{i}", status=StepStatus.COMPLETED, output=step_output(revision, i)
        )


def check_document(document: Any, minimum_revision: int) -> str | None:
    """What is wrong with a crash-test state document, or None when it is sound."""
    if not isinstance(document, dict):
        return f"not an object: {type(document).__name__}"
    revision = document.get("revision")
    if not isinstance(revision, int):
        return f"revision {revision!r} is not an integer"
    if revision < minimum_revision:
        return f"revision {revision} is older than the acknowledged {minimum_revision}"
    if document.get("inputs", {}).get("expected_revision") != revision:
        return f"revision {revision} holds inputs of another revision"
    states = document.get("states", {})
    for i in range(STEPS):
        if states.get(f"step{i}", {}).get("output") != step_output(revision, i):
            return f"revision {revision}: step{i} holds another revision's output"
    return None


def _ack(revision: int) -> None:
    # One write(2) on the pipe per acknowledged revision: nothing buffered in this
    # process, so whatever the parent reads was acknowledged before the kill.
    os.write(1, f"{revision}\n".encode())


def store_writer(root: str, workflow_id: str) -> None:
    """Save ever-increasing revisions through ``JSONFileStore.save`` until killed."""
    store = JSONFileStore(root, lock_timeout=5.0)
    try:
        state = store.load(workflow_id)
    except RunNotFound:
        state = WorkflowState.new("crash", workflow_id=workflow_id)
    while True:
        fill_state(state, state.revision + 1)
        store.save(state)
        _ack(state.revision)


def naive_writer(root: str, workflow_id: str, start_revision: int) -> None:
    """The control: rewrite the file in place (open 'w' + json.dump), no temp, no rename."""
    path = Path(root) / "states" / f"{workflow_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = WorkflowState.new("crash", workflow_id=workflow_id)
    revision = start_revision
    while True:
        revision += 1
        state.revision = revision
        fill_state(state, revision)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(state.to_dict(), fh, indent=2)
        _ack(revision)


def writer_main() -> None:
    """Entry point of ``python -c``: ``argv = [kind, root, workflow_id, start_revision]``."""
    kind, root, workflow_id, start = sys.argv[1:5]
    if kind == "store":
        store_writer(root, workflow_id)
    else:
        naive_writer(root, workflow_id, int(start))


# --- lock tests ------------------------------------------------------------------------


def _counter(state: WorkflowState) -> None:
    state.inputs["counter"] = state.inputs.get("counter", 0) + 1


def increment(
    store_kwargs: dict[str, Any],
    workflow_id: str,
    times: int,
    locked: bool,
    start: Barrier,
    race_window: float = 0.0,
) -> None:
    """Add one to the run's counter ``times`` times.

    ``locked``: each increment is a read-modify-write under the write lock
    (``store.update``). Unlocked (the control), a ``race_window`` pause between the read
    and the write widens the window in which another process's increment is lost.
    """
    store = JSONFileStore(**store_kwargs)
    start.wait(timeout=60)
    for _ in range(times):
        if locked:
            store.update(workflow_id, _counter, durable=True)
        else:
            state = store.load(workflow_id)
            _counter(state)
            if race_window:
                time.sleep(race_window)  # injected: widen the read-modify-write race
            store.save(state)


def hold_run_lock(
    store_kwargs: dict[str, Any], workflow_id: str, held: Event, release: Event
) -> None:
    """Take the run lock, say so, and keep it until ``release`` (or until killed)."""
    store = JSONFileStore(**store_kwargs)
    with store.run_lock(workflow_id):
        held.set()
        release.wait(timeout=120)


def hold_write_lock(
    store_kwargs: dict[str, Any], workflow_id: str, held: Event, release: Event
) -> None:
    """Take the write lock, say so, and keep it until ``release`` (or until killed)."""
    store = JSONFileStore(**store_kwargs)
    with store.write_lock(workflow_id):
        held.set()
        release.wait(timeout=120)


def fork_then_hold_write_lock(
    store_kwargs: dict[str, Any],
    workflow_id: str,
    forked: Queue[int],
    held: Event,
    release: Event,
) -> None:
    """Checkpoint the run, fork a child that lives on, then take the write lock and keep
    it until ``release`` (or until killed). The child's pid goes to ``forked``."""
    store = JSONFileStore(**store_kwargs)
    store.save(store.load(workflow_id))
    pid = os.fork()
    if pid == 0:  # the child: outlives its parent, holding whatever it inherited
        try:
            time.sleep(120)
        finally:
            os._exit(0)
    forked.put(pid)
    with store.write_lock(workflow_id):
        held.set()
        release.wait(timeout=120)


def execute_after(
    store_kwargs: dict[str, Any], workflow_id: str, go: Event, results: Queue[str]
) -> None:
    """An executor starting: take the run lock, load the run, wait for ``go``, save it.

    Reports ``"locked"`` (refused at once), ``"gone"`` (no such run), ``"loaded"`` and
    then ``"saved"`` on ``results``.
    """
    store = JSONFileStore(**store_kwargs)
    try:
        with store.run_lock(workflow_id):
            try:
                state = store.load(workflow_id)
            except RunNotFound:
                results.put("gone")
                return
            results.put("loaded")
            go.wait(timeout=120)
            store.save(state)
            results.put("saved")
    except RunLocked:
        results.put("locked")
