"""The progress events an executor emits, typed, so every face reads the same keys.

An executor calls its ``progress`` callback with one :class:`ProgressEvent` at each step
start, retry, end, kept parallel branch and at the end of the run. Commands print them;
anything else (a live view, a metrics hook) can subscribe the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

# How long the last checkpoint of this thread took to write (``seconds``), set by the
# executor just before it calls its checkpoint listeners (in the same thread, under
# its lock): the events log records it, and the metrics aggregate it at scrape time.
CHECKPOINT_TIMING = threading.local()

EventKind = Literal[
    "step_started",
    "step_retry",
    "step_finished",
    "step_kept",
    "iteration_finished",
    "run_finished",
    "hook",
    "run_waiting",
    "signal_received",
]


class ProgressEvent(TypedDict):
    """One moment of a run. ``event`` says which; the other keys are set where they apply:

    - ``step_started``: ``state``, ``attempt``
    - ``step_retry``: ``state``, ``attempt`` (the one that failed), ``error``, ``delay`` (s)
    - ``step_finished``: ``state``, ``status``, ``attempt``, ``duration_ms``, ``error``
    - ``step_kept``: ``state``, ``attempt`` (a parallel branch a resume did not re-run)
    - ``iteration_finished``: ``state`` (the loop), ``index``, ``status`` (an iteration
      of a for_each/while recorded in its side file)
    - ``run_finished``: ``status``, ``error``
    - ``run_waiting``: ``state``, ``signal`` (or None: a sleep), ``until`` (or None): parked
    - ``signal_received``: ``state``, ``signal``, ``signal_id``: a wait step took a signal
    - ``hook``: ``hook`` (the event: ``workflow_start``, ``pre``...), ``state`` (a step
      hook's), ``kind`` (command, log, call), ``status``, ``output``, ``error``

    A child run's events (a ``call_workflow`` step) come through its parent's callback
    with ``state`` as ``parent_state/child_state`` and ``run`` the child's id.
    """

    event: EventKind
    state: NotRequired[str]
    attempt: NotRequired[int]
    status: NotRequired[str]
    error: NotRequired[str | None]
    delay: NotRequired[float]
    duration_ms: NotRequired[int | None]
    index: NotRequired[int]
    hook: NotRequired[str]
    kind: NotRequired[str]
    output: NotRequired[object]
    run: NotRequired[str]
    signal: NotRequired[str | None]
    signal_id: NotRequired[str]
    until: NotRequired[str | None]


Progress = Callable[[ProgressEvent], None]
