"""The state document as bytes, both ways: ``serialize`` (with finished steps' bytes
cached and spliced, docs/performance.md) and ``parse_state`` (every way a file can be
corrupt named, docs/storage.md). Pure functions of the file store; no locks, no paths
of their own.
"""

from __future__ import annotations

import os
import stat
import weakref
from functools import partial
from itertools import repeat
from operator import attrgetter, eq
from pathlib import Path

import orjson

from wfstate.exceptions import CorruptState
from wfstate.state import ENCODINGS_DROPPED, STEP_ENCODINGS, StepResult, StepStatus, WorkflowState
from wfstate.stores._atomic import READ_FLAGS
from wfstate.stores.base import _UUID4

DUMP_OPTIONS = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE


def serialize(state: WorkflowState) -> bytes:
    """The exact bytes of a state file: 2-space indent, keys in the model's order.

    The same bytes as ``orjson.dumps(state.shallow_dict(), option=DUMP_OPTIONS)`` (a
    property test holds the two equal), but each finished step's bytes are taken from
    a cache when the step has not changed since they were made: a checkpoint of a long
    run re-encodes only its header and the step in flight (docs/performance.md).
    """
    parts = serialize_parts(state)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def serialize_parts(state: WorkflowState) -> list[bytes]:
    """``serialize(state)`` in the pieces it was made of, to be written one after the
    other: a big document keeps its finished steps' bytes in one piece that is not
    copied again at every checkpoint (at 100 KB, joining it anew cost more than the
    rest of the serialisation together)."""
    document = state.shallow_dict()
    states = document["states"]
    if type(states) is not dict or not states:
        return [orjson.dumps(document, option=DUMP_OPTIONS)]
    # Read before anything else: a step changed from now on makes the next look again.
    generation = ENCODINGS_DROPPED[0]
    memo = _MEMOS.get(id(state))
    if memo is None or memo.ref() is not state:
        memo = _Memo(state)
    # Checking a cached step costs about what orjson takes to encode a few hundred
    # bytes, and splicing has a fixed cost of its own: a state of tiny steps, or a small
    # document, is encoded in one call, as before there was a cache.
    if memo.average < SPLICE_MIN_STEP_BYTES or memo.size < SPLICE_MIN_STEP_BYTES * SPLICE_STEPS:
        data = orjson.dumps(document, option=DUMP_OPTIONS)
        memo.size = len(data)
        memo.average = memo.size // len(states)
        return [data]
    names, steps = list(states), list(states.values())
    if len(names) != len(steps):  # another thread added a step between the two copies
        return [orjson.dumps(document, option=DUMP_OPTIONS)]
    # The leading steps whose bytes the last encoding kept in a row are taken as they
    # are, without a look at each: valid while no step whose bytes are kept changed
    # (StepResult counts those changes) and the same objects stand under the same
    # names (compared in C).
    ids = list(map(id, steps))
    kept = len(memo.ids)
    if kept and not (
        generation == memo.generation and names[:kept] == memo.names and ids[:kept] == memo.ids
    ):
        kept = 0
        memo.names, memo.ids, memo.blob = [], [], b""
    names_after, steps_after = names[kept:], steps[kept:]
    # Every other step's entry, or _MISS, looked up in C: a step's entry exists only
    # while the step is unchanged (StepResult drops it on any attribute set or delete),
    # so the name it is filed under is all there is left to check.
    found = list(map(_STEP_CACHE.get, ids[kept:], repeat(_MISS)))
    pieces = list(map(_data_of, found))
    found_names = list(map(_name_of, found))
    grown = len(pieces)
    deferred: list[int] = []
    if found_names != names_after:
        # The steps to encode now (in a live run, the one in flight), found in C too.
        hits = list(map(eq, found_names, names_after))
        at = -1
        for _ in range(hits.count(False)):
            at = hits.index(False, at + 1)
            name, step = names_after[at], steps_after[at]
            if type(step) is not StepResult or type(name) is not str:
                return [orjson.dumps(document, option=DUMP_OPTIONS)]  # odd: no splicing
            if step.status is StepStatus.RUNNING:
                deferred.append(at)  # never kept: encoded below, with the head if it can
                continue
            pieces[at] = _step_piece(name, step)
            hits[at] = _STEP_CACHE.get(id(step), _MISS).name == name  # kept now?
        grown = hits.index(False) if False in hits else len(hits)
    blob = memo.blob
    if grown:
        # The kept run grows: its bytes are joined once now, not at every checkpoint.
        blob = b",".join([blob, *pieces[:grown]] if kept else pieces[:grown])
        memo.generation = generation
        memo.names = names[: kept + grown]
        memo.ids = ids[: kept + grown]
        memo.blob = blob
        del pieces[:grown]
    if len(pieces) <= HEAD_STEPS:
        # The few steps after the kept ones (in a live run, the one in flight) are
        # encoded with the head, in the same orjson call, and the kept steps' bytes
        # go in front of them: ``"states": {`` + kept + ``,`` + the rest.
        document["states"] = dict(zip(names[kept + grown :], steps[kept + grown :], strict=True))
        head = orjson.dumps(document, option=DUMP_OPTIONS)
        if not blob:
            memo.size = len(head)
            memo.average = memo.size // len(steps)
            return [head]
        # Only a top-level key follows a newline and exactly two spaces (deeper lines
        # are indented further, and a newline inside a string is escaped): unique.
        at = head.index(_STATES_OPEN) + len(_STATES_OPEN)
        opening = head[:at]
        # Before the first step after the kept ones, or before the "}" of "states": {}.
        tail = (b"," if pieces else b"\n  ") + head[at:]
    else:
        for at in deferred:
            if at >= grown:
                pieces[at - grown] = _step_piece(names_after[at], steps_after[at])
        document["states"] = None
        head = orjson.dumps(document, option=DUMP_OPTIONS)
        at = head.index(_STATES_MARKER) + _STATES_OFFSET
        opening = head[:at] + b"{"
        rest = b",".join(pieces)
        tail = (b"," + rest if blob else rest) + b"\n  }" + head[at + 4 :]  # 4: len(b"null")
    memo.size = len(opening) + len(blob) + len(tail)
    memo.average = memo.size // len(steps)
    if len(blob) < SEPARATE_BLOB_BYTES:
        # A small document in one piece: one write costs less than a few.
        return [b"".join((opening, blob, tail))]
    return [opening, blob, tail]


# Up to how many steps after the kept ones are encoded in the same call as the head.
HEAD_STEPS = 4

# From how many bytes of kept steps serialize_parts() hands them over as a piece of
# their own rather than joined into one document (a copy of this size costs about what
# a second write() of the pieces does).
SEPARATE_BLOB_BYTES = 32 * 1024


# The average bytes per step from which serialize() splices cached steps, and the size
# of document, in as many such steps, below which it never does (tests set the first to
# -1 to splice every state). Timed right after a durable write, as a checkpoint runs,
# one orjson call beats the splice up to 30-50 KB (5 KB: 11 against 20 us; 100 KB: 51
# against 28 us; docs/performance.md).
SPLICE_MIN_STEP_BYTES = 512
SPLICE_STEPS = 96  # 48 KB


class _Memo:
    """What serialize() keeps of a state's last encoding: its size and a step's average,
    and the leading steps whose bytes were all kept (names, ids, and their bytes). An id stands
    for its object only while the object lives: a kept step that dies counts as a
    change (``_forget_step``), so a new object at its address is never taken for it."""

    __slots__ = ("average", "blob", "generation", "ids", "names", "ref", "size")

    def __init__(self, state: WorkflowState) -> None:
        key = id(state)
        self.ref = weakref.ref(state, partial(_forget_memo, key))
        self.average = self.size = 0  # unknown: encoded whole once, and measured
        self.generation = -1
        self.names: list[str] = []
        self.ids: list[int] = []
        self.blob = b""  # their bytes, joined by commas
        _MEMOS[key] = self


# id(state) -> its memo (which goes with the state).
_MEMOS: dict[int, _Memo] = {}


def _forget_memo(key: int, ref: weakref.ref[WorkflowState]) -> None:
    memo = _MEMOS.get(key)
    if memo is not None and memo.ref is ref:
        del _MEMOS[key]


# --- the cache of finished steps' bytes ---------------------------------------------------
#
# A finished step's result does not change, but nothing forbids changing it (a resume
# rewinds it, a test edits it). So an entry lives in ``wfstate.state.STEP_ENCODINGS``,
# which StepResult itself empties of its entry whenever one of its attributes is set or
# deleted: orjson encodes a step from its instance ``__dict__``, and every way to change
# that dict's keys, order or values (``0 == False == 0.0``, but the three encode
# differently) goes through ``__setattr__``/``__delattr__``, except a change in place of
# a container value. Entries are therefore made only for finished steps whose values are
# all immutable (strings, numbers, None, the status); a container output is encoded
# afresh every time. An entry goes when its step object does (weak reference).

_STATES_MARKER = b'\n  "states": null'
_STATES_OPEN = b'\n  "states": {'
_STATES_OFFSET = len(_STATES_MARKER) - 4
_IMMUTABLE = frozenset({str, type(None), StepStatus, int, float, bool})
_STEP_INDENT = orjson.OPT_INDENT_2


class _Entry:
    __slots__ = ("data", "name", "ref")

    def __init__(self, ref: weakref.ref[StepResult] | None) -> None:
        self.ref = ref
        self.name: str | None = None  # None until the bytes are in: never a hit before
        self.data = b""


_MISS = _Entry(None)  # what serialize() finds for a step without an entry
_name_of, _data_of = attrgetter("name"), attrgetter("data")


# id(step) -> its entry (with the name the step is filed under in ``states``).
_STEP_CACHE: dict[int, _Entry] = STEP_ENCODINGS


def _step_piece(name: str, step: StepResult) -> bytes:
    """``\\n    "<name>": {...}``: one entry of ``states`` as the document holds it,
    encoded now (and kept, when the step is finished and holds only immutable values)."""
    entry = None
    if step.status is not StepStatus.RUNNING:
        # The entry goes in first and is filled last: a change to the step from another
        # thread while it is encoded removes it, and then it is not filled.
        key = id(step)
        entry = _Entry(weakref.ref(step, partial(_forget_step, key)))
        _STEP_CACHE[key] = entry
        for value in tuple(step.__dict__.values()):
            if type(value) not in _IMMUTABLE:  # a container (or anything else)
                _STEP_CACHE.pop(key, None)
                entry = None
                break
    # The step at depth 2 of the document: its own lines indented by four more spaces.
    data = orjson.dumps(step, option=_STEP_INDENT).replace(b"\n", b"\n    ")
    piece = b"\n    " + orjson.dumps(name) + b": " + data
    if entry is not None and _STEP_CACHE.get(id(step)) is entry:
        entry.data = piece
        entry.name = name
    return piece


def _forget_step(key: int, ref: weakref.ref[StepResult]) -> None:
    entry = _STEP_CACHE.get(key)
    if entry is not None and entry.ref is ref:
        del _STEP_CACHE[key]
        ENCODINGS_DROPPED[0] += 1  # its id may be another step's soon (see _Memo)


# How much of a state file a sync reads before it knows the file's size: most state
# files are smaller, and their one short read is all of them (a regular file's read
# comes back short only at its end). No fstat for them: building its result costs a
# sync more than the read (a fifth of the reads' time over 100,000 small files).
FIRST_READ_BYTES = 64 * 1024


def _read_plain(prefix: str, max_bytes: int, workflow_id: str) -> bytes | None:
    """A plain state file's bytes, or None for anything unusual (missing, a link, not a
    regular file, too big, growing, unreadable, an odd id): the store's ``load()`` then
    says precisely what is wrong. Anything that is not a state document in what comes
    back (a FIFO read as empty) fails to parse, and goes the same way."""
    try:
        # validate_id()'s check, inline: a sync reads 100,000 files through here.
        if not _UUID4.fullmatch(workflow_id):
            return None
        fd = os.open(f"{prefix}{workflow_id}.json", READ_FLAGS)
    except Exception:
        return None
    try:
        first = min(FIRST_READ_BYTES, max_bytes + 1)
        data = os.read(fd, first)  # EISDIR for a directory: None below
        if len(data) < first:
            return data
        if first > max_bytes:
            return None  # too big
        # A large file: the rest, now that its size (and kind) is worth asking for.
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or size > max_bytes:
            return None
        data += os.read(fd, size + 1 - len(data))
        return data if len(data) <= size else None  # else it grew while read
    except OSError:
        return None
    finally:
        os.close(fd)


def parse_state(data: bytes, path: Path | str, workflow_id: str | None = None) -> WorkflowState:
    """Parse a state file's bytes.

    Raises:
        CorruptState: empty, not JSON, invalid UTF-8, too deep, not an object, not a state,
            or a document whose ``workflow_id`` is not its file's.
    """
    if not data.strip():
        raise CorruptState(f"{path} is empty", path=str(path))
    try:
        # orjson rejects invalid UTF-8 and nesting deeper than 1024 levels with a
        # JSONDecodeError, never a RecursionError.
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CorruptState(f"{path} is not valid JSON: {exc}", path=str(path)) from None
    if not isinstance(document, dict):
        raise CorruptState(
            f"{path} holds a JSON {type(document).__name__}, not a state object", path=str(path)
        )
    try:
        state = WorkflowState.from_dict(document)
    except (ValueError, RecursionError) as exc:
        raise CorruptState(f"{path} is not a valid state: {exc}", path=str(path)) from None
    if workflow_id is not None and state.workflow_id != workflow_id:
        raise CorruptState(
            f"{path} holds run {state.workflow_id!r}, not {workflow_id}", path=str(path)
        )
    return state
