"""The in-memory form of a workflow definition (docs/workflows.md), as the engine consumes it.

The loader (``loader.py``) builds these from YAML after JSON Schema and semantic
validation; awf template spellings are already normalised to Jinja2 here, and
durations are seconds (floats).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

StateType = Literal[
    "step",
    "parallel",
    "terminal",
    "for_each",
    "while",
    "call_workflow",
    "operation",
    "wait",
    "sleep",
]
Backoff = Literal["constant", "linear", "exponential"]
Strategy = Literal["all_succeed", "any_succeed", "best_effort"]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 1
    initial_delay: float = 0.0
    max_delay: float | None = None
    backoff: Backoff = "constant"
    multiplier: float = 2.0
    jitter: float = 0.0
    # Empty: every failure may be retried; otherwise only these exit codes (command steps).
    retryable_exit_codes: tuple[int, ...] = ()

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.backoff == "exponential":
            try:
                growth = self.multiplier ** (attempt - 1)
            except OverflowError:  # a large multiplier or attempt count
                growth = math.inf
            base = self.initial_delay * growth if self.initial_delay else 0.0
        elif self.backoff == "linear":
            base = self.initial_delay * attempt
        else:
            base = self.initial_delay
        if self.max_delay is not None:
            base = min(base, self.max_delay)
        if not math.isfinite(base):
            return math.inf  # jitter on infinity is NaN; the executor refuses to wait this
        if self.jitter:
            spread = base * self.jitter
            base += (rng or random).uniform(-spread, spread)
        return max(0.0, base)

    def is_retryable(self, exit_code: int | None) -> bool:
        if not self.retryable_exit_codes or exit_code is None:
            return True
        return exit_code in self.retryable_exit_codes


@dataclass(frozen=True)
class Transition:
    goto: str
    when: str | None = None  # a Jinja2 expression; None always matches


@dataclass(frozen=True)
class HookAction:
    """One action of a hook: a shell ``command``, a ``log`` line or a Python ``call``."""

    kind: Literal["command", "log", "call"]
    text: str  # the command or log template, or the dotted path of the callable
    with_: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputDef:
    """A workflow output (awf ``outputs: [{name, from}]``): ``from`` is an expression."""

    name: str
    from_: str
    description: str = ""


@dataclass(frozen=True)
class StateDef:
    name: str
    type: StateType
    line: int = 0
    description: str = ""
    # step
    command: str | None = None
    call: str | None = None
    with_: dict[str, Any] = field(default_factory=dict)
    dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    retry: RetryPolicy | None = None
    continue_on_error: bool = False
    # routing (step and parallel)
    on_success: str | None = None
    on_failure: str | None = None
    transitions: tuple[Transition, ...] = ()
    # parallel
    parallel: tuple[str, ...] = ()
    strategy: Strategy = "all_succeed"
    max_concurrent: int | None = None
    # terminal
    status: Literal["success", "failure"] = "success"
    message: str | None = None
    # loops (for_each / while; see wfstate.engine.loops). on_complete is on_success.
    items: Any = None
    while_: str | None = None
    body: tuple[str, ...] = ()
    max_iterations: int | str = 100
    break_when: str | None = None
    # call_workflow (see wfstate.engine.calls)
    workflow: str | None = None
    call_inputs: dict[str, Any] = field(default_factory=dict)
    call_outputs: dict[str, str] = field(default_factory=dict)  # child output -> parent name
    # operation (see wfstate.engine.operations); its inputs are ``with_``
    operation: str | None = None
    # step hooks: {"pre": (...), "post": (...)}
    hooks: dict[str, tuple[HookAction, ...]] = field(default_factory=dict)
    # inline on_failure: {message, status}: the run fails with this message and exit code
    failure_message: str | None = None
    failure_status: int | None = None
    # wait (a named signal, its payload's JSON Schema, who may answer) and sleep
    # (``duration`` seconds or an ``until`` template); both park the run (engine/waits.py).
    # A wait's ``timeout`` is the step's ``timeout``; ``on_timeout`` routes it.
    signal: str | None = None
    schema: dict[str, Any] | None = None
    assignees: tuple[str, ...] = ()
    on_timeout: str | None = None
    duration: float | None = None
    until: str | None = None

    def targets(self) -> list[str]:
        """Every state this one can go to (for graphs and reachability)."""
        out = [t.goto for t in self.transitions]
        out += [s for s in (self.on_success, self.on_failure, self.on_timeout) if s]
        out += list(self.body)
        return list(dict.fromkeys(out))


@dataclass(frozen=True)
class InputDef:
    name: str
    type: Literal["string", "integer", "number", "boolean"] = "string"
    required: bool = False
    default: Any = None
    has_default: bool = False
    description: str = ""
    validation: dict[str, Any] = field(default_factory=dict)
    # Sealed in the state, opened only for steps, masked in outputs (wfstate.secrets).
    secret: bool = False


@dataclass(frozen=True)
class ScheduleDef:
    """One ``schedule:`` entry: a cron expression or a fixed period (``every``)."""

    name: str
    cron: str = ""
    every: float | None = None  # seconds
    timezone: str = "UTC"
    inputs: dict[str, Any] = field(default_factory=dict)
    catch_up: Literal["none", "latest", "all"] = "latest"
    enabled: bool = True


@dataclass(frozen=True)
class ConcurrencyDef:
    """``concurrency:``: at most ``limit`` runs per rendered ``key`` at a time."""

    limit: int = 1
    key: str = ""  # a template over inputs; "" = one limit for the whole workflow
    on_limit: Literal["queue", "cancel_newest", "cancel_oldest"] = "queue"


@dataclass(frozen=True)
class WorkflowDefinition:
    name: str
    initial: str
    states: dict[str, StateDef]
    version: str = ""
    description: str = ""
    inputs: tuple[InputDef, ...] = ()
    path: Path | None = None
    sha256: str = ""
    # Unsupported keys (awf's hooks, agent, capture...), one message each: reported by
    # validate_workflow as warnings, never silently dropped.
    warnings: tuple[str, ...] = ()
    schedules: tuple[ScheduleDef, ...] = ()
    concurrency: ConcurrencyDef | None = None
    # workflow_start / workflow_end / workflow_error / workflow_cancel
    hooks: dict[str, tuple[HookAction, ...]] = field(default_factory=dict)
    outputs: tuple[OutputDef, ...] = ()
    # Environment variables of the executor whose values are masked in whatever a step
    # prints or raises (wfstate.secrets; docs/operations.md).
    secret_env: tuple[str, ...] = ()

    def graph(self) -> dict[str, Any]:
        """Nodes and edges, for the admin's SVG and the API."""
        nodes = [
            {
                "id": s.name,
                "type": s.type,
                "terminal_status": s.status if s.type == "terminal" else None,
                "workflow": s.workflow,
                "hooks": sorted(s.hooks),
            }
            for s in self.states.values()
        ]
        edges: list[dict[str, Any]] = []
        for s in self.states.values():
            for t in s.transitions:
                edges.append(
                    {
                        "source": s.name,
                        "target": t.goto,
                        "kind": "when" if t.when else "default",
                        "label": t.when or "",
                    }
                )
            if s.on_success:
                edges.append(
                    {"source": s.name, "target": s.on_success, "kind": "success", "label": ""}
                )
            if s.on_failure:
                edges.append(
                    {"source": s.name, "target": s.on_failure, "kind": "failure", "label": ""}
                )
            if s.on_timeout:
                edges.append(
                    {"source": s.name, "target": s.on_timeout, "kind": "timeout", "label": ""}
                )
            for branch in s.parallel:
                edges.append({"source": s.name, "target": branch, "kind": "branch", "label": ""})
            if s.body:
                # Into the body, along it (a body step without routes goes on to the
                # next one) and, from its last such step, back to the loop.
                label = "for each" if s.type == "for_each" else f"while {s.while_ or ''}"
                edges.append(
                    {"source": s.name, "target": s.body[0], "kind": "body", "label": label}
                )
                for here, nxt in zip(s.body, [*s.body[1:], s.name], strict=True):
                    step = self.states.get(here)
                    if step is not None and not (
                        step.on_success or step.on_failure or step.transitions
                    ):
                        edges.append({"source": here, "target": nxt, "kind": "body", "label": ""})
        return {"initial": self.initial, "nodes": nodes, "edges": edges}
