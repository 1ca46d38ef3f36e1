"""StepWatch (which steps changed since the last look, in C) and the template context
built from it must say exactly what a full comparison in Python says, whatever happens
to the steps between two looks: steps added, ended, retried, replaced, removed,
renamed, reordered."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfstate.definitions.templates import ContextCache, build_context
from wfstate.state import StepResult, StepStatus, StepWatch, WorkflowState

OPS = ["add", "end", "fail", "retry", "replace", "drop", "rename", "reorder", "rewind", "same"]


def _reference_changed(seen: dict[str, Any], states: dict[str, StepResult]) -> list[str]:
    """The old events listener's comparison: by name, of (status, attempt, end)."""
    return [
        name
        for name, step in states.items()
        if seen.get(name) != (str(step.status), step.attempt, step.completed_at)
    ]


def _apply(state: WorkflowState, op: str, pick: int, tick: int) -> None:
    states = state.states
    names = list(states)
    if op == "add" or not names:
        name = f"s{tick}"
        states[name] = StepResult(name=name, output=f"out {tick}")
        return
    name = names[pick % len(names)]
    step = states[name]
    if op in ("end", "fail"):
        # A result changes in place only with its status or end (as the executor does).
        step.status = StepStatus.COMPLETED if op == "end" else StepStatus.FAILED
        step.completed_at = f"t{tick}"
        step.output = f"done {tick}"
    elif op == "retry":
        step.attempt += 1
        step.status = StepStatus.RUNNING
        step.completed_at = None
    elif op == "replace":
        states[name] = StepResult(
            name=name, status=step.status, completed_at=step.completed_at, output=f"new {tick}"
        )
    elif op == "drop":
        del states[name]
    elif op == "rename":
        del states[name]
        states[f"{name}r"] = step
    elif op == "reorder":
        del states[name]
        states[name] = step
    elif op == "rewind":
        for other in names[pick % len(names) :]:
            del states[other]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rounds=st.lists(
        st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 50)), max_size=5), max_size=12
    )
)
def test_watch_and_context_match_a_full_comparison(rounds: list[list[tuple[str, int]]]) -> None:
    state = WorkflowState.new("watched")
    watch = StepWatch()
    cache = ContextCache()
    seen: dict[str, Any] = {}
    tick = 0
    for ops in [[], *rounds]:
        for op, pick in ops:
            tick += 1
            _apply(state, op, pick, tick)
        expected = _reference_changed(seen, state.states)
        seen = {n: (str(s.status), s.attempt, s.completed_at) for n, s in state.states.items()}
        assert watch.changed(state.states) == expected, ops
        cached = build_context(state, cache)
        plain = build_context(state)
        assert list(cached["states"]) == list(plain["states"]), ops
        assert cached["states"] == plain["states"], ops


def test_an_unchanged_state_has_no_changed_steps() -> None:
    state = WorkflowState.new("quiet")
    for i in range(100):
        state.states[f"s{i}"] = StepResult(name=f"s{i}", status=StepStatus.COMPLETED)
    watch = StepWatch(by_object=True)
    assert len(watch.changed(state.states)) == 100
    assert watch.changed(state.states) == []
    state.states["s50"] = StepResult(name="s50", status=StepStatus.COMPLETED)  # same key
    assert watch.changed(state.states) == ["s50"]  # another object
    state.states["s7"].attempt = 2
    assert watch.changed(state.states) == ["s7"]
