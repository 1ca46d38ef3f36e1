"""The progress events an executor emits, typed, so every face reads the same keys.

An executor calls its ``progress`` callback with one :class:`ProgressEvent` at each step
start, retry, end, kept parallel branch and at the end of the run. Commands print them;
anything else (a live view, a metrics hook) can subscribe the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NotRequired, TypedDict

EventKind = Literal[
    "step_started",
    "step_retry",
    "step_finished",
    "step_kept",
    "run_finished",
    "run_waiting",
    "signal_received",
]


class ProgressEvent(TypedDict):
    """One moment of a run. ``event`` says which; the other keys are set where they apply:

    - ``step_started``: ``state``, ``attempt``
    - ``step_retry``: ``state``, ``attempt`` (the one that failed), ``error``, ``delay`` (s)
    - ``step_finished``: ``state``, ``status``, ``attempt``, ``duration_ms``, ``error``
    - ``step_kept``: ``state``, ``attempt`` (a parallel branch a resume did not re-run)
    - ``run_finished``: ``status``, ``error``
    - ``run_waiting``: ``state``, ``signal`` (or None: a sleep), ``until`` (or None): parked
    - ``signal_received``: ``state``, ``signal``, ``signal_id``: a wait step took a signal
    """

    event: EventKind
    state: NotRequired[str]
    attempt: NotRequired[int]
    status: NotRequired[str]
    error: NotRequired[str | None]
    delay: NotRequired[float]
    duration_ms: NotRequired[int | None]
    signal: NotRequired[str | None]
    signal_id: NotRequired[str]
    until: NotRequired[str | None]


Progress = Callable[[ProgressEvent], None]
