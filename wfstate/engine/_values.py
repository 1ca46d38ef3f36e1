"""Small value helpers of the engine: times, text the state can hold, retry delays,
what a process cannot receive, masking secrets. No state, no I/O."""

from __future__ import annotations

import math
import os
import random
from typing import Any, overload

import orjson

from wfstate.definitions.model import RetryPolicy
from wfstate.engine.steps import AttemptResult
from wfstate.exceptions import StateLocked, StorageError
from wfstate.state import StepResult, WorkflowState, parse_time


def _elapsed_ms(started_at: str | None, completed_at: str) -> int | None:
    start, end = parse_time(started_at), parse_time(completed_at)
    if start is None or end is None:
        return None
    return int((end - start).total_seconds() * 1000)


def _output_size(entry: StepResult) -> int:
    try:
        output = 0 if entry.output is None else len(orjson.dumps(entry.output))
    except TypeError:
        output = 0
    return output + len(entry.stderr or "")


def _is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, StorageError | StateLocked)


# Far beyond any sensible wait (about 31 years), still far from float trouble.
MAX_RETRY_DELAY = 1e9


def _retry_delay(policy: RetryPolicy, attempt: int, rng: random.Random) -> float | None:
    """The wait before the next attempt, or None when it overflows (no max_delay caps it)."""
    try:
        delay = policy.delay(attempt, rng)
    except (OverflowError, ValueError):
        delay = math.inf
    if math.isnan(delay):
        delay = math.inf
    if not math.isfinite(delay) or delay > MAX_RETRY_DELAY:
        if policy.max_delay is not None and math.isfinite(policy.max_delay):
            return max(0.0, min(policy.max_delay, MAX_RETRY_DELAY))
        return None
    return max(0.0, delay)


def _nul_problem(command: str, cwd: str | None, env: dict[str, str]) -> str | None:
    """Why no process can be started with these values (a NUL byte ends a C string)."""
    if "\x00" in command:
        return "the command contains a NUL byte, which no process can receive"
    if cwd is not None and "\x00" in cwd:
        return f"dir {cwd!r} contains a NUL byte"
    for key, value in env.items():
        if "\x00" in key or "\x00" in value:
            return f"env {key!r} contains a NUL byte, which no process can receive"
    return None


@overload
def _clean(text: str) -> str: ...
@overload
def _clean(text: None) -> None: ...
@overload
def _clean(text: str | None) -> str | None: ...
def _clean(text: str | None) -> str | None:
    """``text`` as valid UTF-8: a lone surrogate (from an exception message, say) would
    make the whole state document unwritable."""
    if text is None:
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def _secret_values(state: WorkflowState, definition: Any = None) -> list[str]:
    """The clear texts to mask in what a step prints: secret inputs' values, and the
    values of the executor's environment variables the workflow names in ``secret_env``
    (a command inherits them, so ``echo $TOKEN`` would otherwise print it)."""
    from wfstate import secrets

    values = secrets.clear_values(state.inputs)
    names = getattr(definition, "secret_env", None) or ()
    if names:
        # Not shorter than 3 characters, like secret inputs (secrets.clear_values).
        extra = {os.environ[n] for n in names if len(os.environ.get(n) or "") >= 3}
        values = sorted(set(values) | extra, key=len, reverse=True)  # longest first
    return values


def _masked(outcome: AttemptResult, state: WorkflowState, definition: Any = None) -> AttemptResult:
    """The outcome with every secret value masked (wfstate.secrets): secret inputs and
    the workflow's ``secret_env`` variables."""
    from wfstate import secrets

    values = _secret_values(state, definition)
    if values:
        outcome.output = secrets.mask(outcome.output, values)
        outcome.stderr = secrets.mask(outcome.stderr, values)
        outcome.error = secrets.mask(outcome.error, values)
        outcome.traceback = secrets.mask(outcome.traceback, values)
        # The bytes a whole-output side file keeps are masked too.
        outcome.raw_output = secrets.mask(outcome.raw_output, values)
        outcome.raw_stderr = secrets.mask(outcome.raw_stderr, values)
    return outcome
