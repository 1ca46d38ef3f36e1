"""serialize() splices finished steps' cached bytes: the document must stay exactly
what orjson writes for the whole state, whatever happens to the steps between saves."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wfstate.state import StepResult, StepStatus, WorkflowState
from wfstate.stores import _serialize
from wfstate.stores._serialize import DUMP_OPTIONS, serialize


@pytest.fixture(autouse=True)
def splice_every_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Splice whatever the steps' size (the store splices from 2 KB a step on)."""
    monkeypatch.setattr(_serialize, "SPLICE_MIN_STEP_BYTES", -1)


def plain(state: WorkflowState) -> bytes:
    """The reference: one orjson call over the whole document, no cache."""
    return orjson.dumps(state.shallow_dict(), option=DUMP_OPTIONS)


texts = st.text(max_size=40)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=8,
)
statuses = st.sampled_from([*StepStatus, "completed", "running"])


@st.composite
def steps(draw: st.DrawFn) -> StepResult:
    return StepResult(
        name=draw(texts),
        status=draw(statuses),
        output=draw(values),
        stderr=draw(st.none() | texts),
        exit_code=draw(st.none() | st.integers(-300, 300) | st.booleans()),
        attempt=draw(st.integers(0, 300)),
        error=draw(st.none() | texts),
        started_at=draw(st.none() | texts),
        completed_at=draw(st.none() | texts),
        duration_ms=draw(st.none() | st.integers(0, 10**12) | st.floats(0, 1e6)),
        output_truncated=draw(st.booleans() | st.integers(0, 1)),
        traceback=draw(st.none() | texts),
        process=draw(st.none() | st.dictionaries(texts, scalars, max_size=3)),
    )


@st.composite
def states(draw: st.DrawFn) -> WorkflowState:
    state = WorkflowState.new(
        draw(texts),
        inputs=draw(st.dictionaries(texts, values, max_size=3)),
        started_by=draw(st.none() | st.dictionaries(texts, scalars, min_size=1, max_size=2)),
    )
    # Keys that look like the document's own lines must not confuse the splice.
    names = st.one_of(texts, st.sampled_from(["states", '\n  "states": null', "", "é\u2028"]))
    for name in draw(st.lists(names, max_size=6, unique=True)):
        state.states[name] = draw(steps())
    state.history = draw(st.lists(st.dictionaries(texts, values, max_size=2), max_size=2))
    state.error = draw(st.none() | texts)
    return state


def _numbers_swapped(value: Any) -> Any:
    # Equal in Python, different in JSON: a cache compared with == would miss these.
    if value is True or value is False:
        return int(value)
    if type(value) is int and -(2**53) < value < 2**53:
        return float(value)
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


FIELDS = [
    "status",
    "output",
    "stderr",
    "exit_code",
    "attempt",
    "error",
    "duration_ms",
    "output_truncated",
    "process",
    "loop",
    "child_run_id",
    "hooks",
]


@st.composite
def mutations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    kinds = st.sampled_from(
        ["set", "swap-number", "in-place", "reorder", "rename", "replace", "add", "drop"]
    )
    return [(draw(kinds), draw(values)) for _ in range(draw(st.integers(1, 4)))]


def mutate(state: WorkflowState, kind: str, value: Any, pick: int) -> None:
    if not state.states:
        state.states["new"] = StepResult(name="new", status=StepStatus.COMPLETED, output=value)
        return
    names = list(state.states)
    name = names[pick % len(names)]
    step = state.states[name]
    field = FIELDS[pick % len(FIELDS)]
    if kind == "set":
        setattr(step, field, value)
    elif kind == "swap-number":
        for each in FIELDS:
            setattr(step, each, _numbers_swapped(getattr(step, each)))
    elif kind == "in-place":
        if isinstance(step.output, dict):
            step.output["added"] = value
        elif isinstance(step.output, list):
            step.output.append(value)
        else:
            step.output = {"now": [value]}
    elif kind == "reorder":
        # Same values, another key order in the instance dict: orjson follows it.
        saved = getattr(step, field)
        delattr(step, field)
        setattr(step, field, saved)
    elif kind == "rename":
        del state.states[name]
        state.states[f"{name}-renamed"] = step
    elif kind == "replace":
        state.states[name] = dataclasses.replace(step, stderr="replaced")
    elif kind == "add":
        state.states[f"added-{len(names)}"] = StepResult(
            name="added", status=StepStatus.COMPLETED, output=value
        )
    elif kind == "drop":
        del state.states[name]


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=states(), rounds=st.lists(mutations(), max_size=4), pick=st.integers(0, 1000))
def test_serialize_is_byte_identical_across_mutations(
    state: WorkflowState, rounds: list[list[tuple[str, Any]]], pick: int
) -> None:
    assert serialize(state) == plain(state)
    assert serialize(state) == plain(state)  # from the cache this time
    for round_ in rounds:
        for i, (kind, value) in enumerate(round_):
            mutate(state, kind, value, pick + i)
        state.revision += 1
        assert serialize(state) == plain(state), round_


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    state=states(),
    rounds=st.lists(mutations(), max_size=4),
    pick=st.integers(0, 1000),
    head_steps=st.sampled_from([0, 1, 100]),
    in_flight=st.integers(0, 3),
)
def test_steps_after_the_kept_ones_are_encoded_either_way(
    state: WorkflowState,
    rounds: list[list[tuple[str, Any]]],
    pick: int,
    head_steps: int,
    in_flight: int,
) -> None:
    # The steps after the kept ones go with the head (up to HEAD_STEPS of them) or are
    # joined as pieces: both ways, with steps in flight among them, give the same bytes.
    saved = _serialize.HEAD_STEPS
    _serialize.HEAD_STEPS = head_steps
    try:
        for i in range(in_flight):
            state.states[f"flight{i}"] = StepResult(name=f"flight{i}", output=f"{i}" * 600)
        assert serialize(state) == plain(state)
        for round_ in rounds:
            for i, (kind, value) in enumerate(round_):
                mutate(state, kind, value, pick + i)
            for name, step in list(state.states.items())[-in_flight:] if in_flight else []:
                if step.status == StepStatus.RUNNING:
                    step.output = f"{step.output}more of {name}\n"
            state.revision += 1
            assert serialize(state) == plain(state), round_
    finally:
        _serialize.HEAD_STEPS = saved


def test_a_finished_step_is_encoded_once_and_its_bytes_reused() -> None:
    state = WorkflowState.new("cached")
    big = "x" * 10_000
    for i in range(3):
        state.states[f"s{i}"] = StepResult(name=f"s{i}", status=StepStatus.COMPLETED, output=big)
    state.states["live"] = StepResult(name="live", output="")
    first = serialize(state)
    pieces = {
        name: _serialize._STEP_CACHE[id(step)].data
        for name, step in state.states.items()
        if name != "live"
    }
    assert id(state.states["live"]) not in _serialize._STEP_CACHE  # in flight: never cached
    for round_ in range(5):
        state.states["live"].output += f"line {round_}\n"
        assert serialize(state) == plain(state)
    for name, data in pieces.items():
        assert _serialize._STEP_CACHE[id(state.states[name])].data is data
    assert first != serialize(state)


def test_container_outputs_are_never_cached_and_changes_in_place_show() -> None:
    state = WorkflowState.new("containers")
    step = StepResult(name="s", status=StepStatus.COMPLETED, output={"rows": [1, 2]})
    state.states["s"] = step
    serialize(state)
    assert id(step) not in _serialize._STEP_CACHE
    step.output["rows"].append(3)
    assert serialize(state) == plain(state)
    assert b"3" in serialize(state)


def test_an_entry_goes_with_its_step() -> None:
    state = WorkflowState.new("gone")
    state.states["s"] = StepResult(name="s", status=StepStatus.COMPLETED, output="x" * 100)
    serialize(state)
    key = id(state.states["s"])
    assert key in _serialize._STEP_CACHE
    del state.states["s"]
    gc.collect()
    assert key not in _serialize._STEP_CACHE


def test_equal_numbers_of_another_type_are_encoded_afresh() -> None:
    # 0 == False == 0.0 in Python, but not in JSON: a cache hit needs the same objects.
    for field, before, after in [
        ("exit_code", 0, False),
        ("exit_code", 1, True),
        ("output_truncated", False, 0),
        ("attempt", 1, 1.0),
        ("duration_ms", 5, 5.0),
        ("output", 7, 7.0),
    ]:
        state = WorkflowState.new("numbers")
        step = StepResult(name="s", status=StepStatus.COMPLETED, output="done")
        setattr(step, field, before)
        state.states["s"] = step
        serialize(state)
        assert id(step) in _serialize._STEP_CACHE
        setattr(step, field, after)
        assert serialize(state) == plain(state), field


def test_small_steps_are_encoded_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_serialize, "SPLICE_MIN_STEP_BYTES", 2048)
    state = WorkflowState.new("small")
    for i in range(50):
        state.states[f"s{i}"] = StepResult(name=f"s{i}", status=StepStatus.COMPLETED, output="ok")
    for _ in range(3):
        assert serialize(state) == plain(state)
    assert not any(id(step) in _serialize._STEP_CACHE for step in state.states.values())
    # Steps of 4 KB: spliced from the second save on (the first measures them).
    for step in state.states.values():
        step.output = "x" * 4096
    for _ in range(3):
        assert serialize(state) == plain(state)
    assert all(id(step) in _serialize._STEP_CACHE for step in state.states.values())


def test_a_change_while_a_step_is_encoded_is_not_cached_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Another thread changes a finished step while serialize() encodes it: the bytes of
    # the old values must not be kept as the step's (the entry goes in before the
    # encoding, the step's __setattr__ removes it, and an entry removed is not filled).
    state = WorkflowState.new("race")
    step = StepResult(name="s", status=StepStatus.COMPLETED, output="before")
    state.states["s"] = step
    real_dumps = orjson.dumps

    def dumps_then_change(value: Any, *args: Any, **kwargs: Any) -> bytes:
        data = real_dumps(value, *args, **kwargs)
        if value is step and step.output == "before":
            step.output = "after"
        return data

    monkeypatch.setattr(_serialize.orjson, "dumps", dumps_then_change)
    serialize(state)
    monkeypatch.setattr(_serialize.orjson, "dumps", real_dumps)
    assert serialize(state) == plain(state)
    assert b"after" in serialize(state)


def test_from_dict_fills_a_step_as_its_constructor_does() -> None:
    # from_dict() bypasses the generated __init__ (whose assignments each go through
    # __setattr__); the instance dict must hold the same keys, in the same order (the
    # order orjson writes them in), with the same values.
    for document in (
        {"name": "bare"},
        {"name": "full", **dict.fromkeys(FIELDS), "status": "failed", "attempt": 3},
        StepResult(name="round", status=StepStatus.COMPLETED, output={"a": [1]}).to_dict(),
    ):
        loaded = StepResult.from_dict(document)
        built = StepResult(
            **{f.name: getattr(loaded, f.name) for f in dataclasses.fields(StepResult)}
        )
        assert list(loaded.__dict__) == [f.name for f in dataclasses.fields(StepResult)]
        assert loaded.__dict__ == built.__dict__
        assert loaded == built


def test_a_step_at_a_dead_steps_address_is_encoded_afresh() -> None:
    # serialize() reuses the leading steps' bytes by their ids: a step that dies and a
    # new one made at its address, under its name, must not be taken for the old one.
    state = WorkflowState.new("reuse")
    for i in range(5):
        state.states[f"s{i}"] = StepResult(name=f"s{i}", status=StepStatus.COMPLETED, output="a")
    serialize(state)
    serialize(state)
    old_id = id(state.states["s2"])
    del state.states["s2"]
    gc.collect()
    candidates = [StepResult.__new__(StepResult) for _ in range(1000)]
    reused = [step for step in candidates if id(step) == old_id]
    if not reused:
        pytest.skip("the allocator did not reuse the address (nothing to show)")
    new = reused[0]
    new.__dict__.update(StepResult(name="s2", status=StepStatus.COMPLETED, output="b").__dict__)
    state.states["s2"] = new
    for i in (3, 4):  # back in its place: the names are those of the last encoding
        state.states[f"s{i}"] = state.states.pop(f"s{i}")
    assert serialize(state) == plain(state)
    assert b'"b"' in serialize(state)
