"""Reading state files fast for a sync: plain files parsed and projected as they are
read, in a forked worker process when that helps (the only place with multiprocessing)."""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import os
import queue
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from django.conf import settings

from wfstate.index._table import Values, comparable
from wfstate.index.projection import (
    _DONE,
    _FINAL,
    RUN_STATUSES,
    STEP_STATUSES,
    StepCounter,
    _summary,
    _text,
    plain_document,
    project,
)
from wfstate.index.rows import PROJECTION_ERRORS
from wfstate.state import REVISION_MAX, SCHEMA_VERSION

logger = logging.getLogger("wfstate.index")

# How many read batches a sync's worker process may be ahead of the rows written, and
# how long a sync waits for it to send one before it reads the files itself.
SYNC_WORKER_AHEAD = 20
SYNC_WORKER_TIMEOUT = 60.0


@dataclass(frozen=True)
class PlainReader:
    """Reads, parses and projects plain, current state documents.

    The store's ``raw_reader()`` (one ``os.read`` per file for the file store), ``orjson``,
    and :func:`project` on the document: no ``WorkflowState`` is built. A file that is
    anything but plain (missing, a link, broken, an older schema, odd types) comes back
    as None, for ``store.load()`` to upgrade or to name what is wrong. No database, no
    shared state: this is what the worker process of a parallel sync runs.
    """

    read_raw: Callable[[str], bytes | None]  # the store's raw_reader()
    steps: StepCounter
    text_times: bool
    tz: dt.tzinfo
    use_tz: bool = field(default_factory=lambda: bool(settings.USE_TZ))

    # Whether the connection's zone is UTC: then a time the engine wrote is kept as its
    # own digits (see _text_time).
    tz_utc: bool = field(init=False)

    def __post_init__(self) -> None:
        utc = self.tz is dt.UTC or getattr(self.tz, "key", None) in ("UTC", "Etc/UTC")
        object.__setattr__(self, "tz_utc", utc)

    def _text_time(self, value: str, parsed: dt.datetime) -> str:
        """The text SQLite keeps for the time ``value`` (``parsed`` by ``fromisoformat``):
        ``str()`` of it, naive in the connection's zone, as ``comparable()`` gives. A
        time in the engine's own form (``state.utcnow()``) in a UTC connection is cut
        from the string instead, for a fifth of the cost; any other form (ISO 8601 has
        many that ``fromisoformat`` takes: week dates, a comma before the fraction,
        another separator or offset) goes through the datetime."""
        if self.tz_utc and _UTC_TIME.fullmatch(value) is not None:
            if value[20:26] == "000000":  # str() leaves out a zero fraction
                return f"{value[:10]} {value[11:19]}"
            return f"{value[:10]} {value[11:26]}"
        return str(parsed.astimezone(self.tz).replace(tzinfo=None))

    def __call__(self, ids: list[str]) -> list[tuple[str, Values | None]]:
        out: list[tuple[str, Values | None]] = []
        read_raw, loads, values = self.read_raw, orjson.loads, self.values
        for workflow_id in ids:
            data = read_raw(workflow_id)
            if data is None:
                out.append((workflow_id, None))
                continue
            try:
                document = loads(data)
            except orjson.JSONDecodeError:
                out.append((workflow_id, None))
                continue
            out.append((workflow_id, values(document, workflow_id)))
        return out

    def values(self, document: Any, workflow_id: str) -> Values | None:
        """``comparable(project(document))`` if ``plain_document(document, workflow_id)``
        and the projection succeeds, else None: the same checks and the same arithmetic
        in one pass, without the intermediate dict (``project``, ``plain_document`` and
        ``comparable`` cost twice the parse of the file when called apart). Without
        ``USE_TZ`` (times made naive in ``TIME_ZONE``) it calls them. A test holds the
        two ways equal over varied documents (tests/test_index_projection.py).
        """
        if not self.use_tz:
            return _values_apart(self, document, workflow_id)
        # plain_document(), in its order.
        if type(document) is not dict:
            return None
        get = document.get
        version = get("schema_version")
        if type(version) is not int or version != SCHEMA_VERSION:
            return None
        name = get("workflow_name")
        if get("workflow_id") != workflow_id or type(name) is not str:
            return None
        status = get("status")
        if type(status) is not str or status not in RUN_STATUSES:
            return None
        started, updated = get("started_at"), get("updated_at")
        if type(started) is not str or type(updated) is not str or not started or not updated:
            return None
        revision = get("revision")
        if type(revision) is not int or revision < 0:
            return None
        workflow_version, current, completed = (
            get("workflow_version"),
            get("current_state"),
            get("completed_at"),
        )
        if (
            (workflow_version is not None and type(workflow_version) is not str)
            or (current is not None and type(current) is not str)
            or (completed is not None and type(completed) is not str)
        ):
            return None
        inputs, history, states = get("inputs"), get("history"), get("states")
        if inputs is not None and type(inputs) is not dict:
            return None
        if history is not None and type(history) is not list:
            return None
        # The step checks and project()'s count of them, in one loop.
        done = reached = 0
        failed = ""  # the first failed step's error
        if states is not None:
            if type(states) is not dict:
                return None
            reached = len(states)
            for step in states.values():
                if type(step) is not dict or "name" not in step:
                    return None
                step_status = step.get("status", "running")
                if type(step_status) is not str or step_status not in STEP_STATUSES:
                    return None
                attempt = step.get("attempt")
                if attempt is not None and type(attempt) is not int:
                    return None
                if step_status in _DONE:
                    done += 1
                    if step_status == "failed" and not failed and step.get("error"):
                        failed = f"{step['name']}: {step['error']}"
        # project() and comparable(), with USE_TZ.
        if revision > REVISION_MAX:
            return None
        total = reached if status in _FINAL else max(self.steps(name) or 0, reached)
        fromiso = dt.datetime.fromisoformat
        try:
            started_at = fromiso(started.replace("Z", "+00:00"))
            updated_at = fromiso(updated.replace("Z", "+00:00"))
            completed_at = fromiso(completed.replace("Z", "+00:00")) if completed else None
            end = completed_at or updated_at
            duration = int((end - started_at).total_seconds() * 1000)
            times: tuple[Any, Any, Any] = (started_at, updated_at, completed_at)
            if self.text_times:  # the text SQLite keeps (see comparable())
                text = self._text_time
                times = (
                    text(started, started_at),
                    text(updated, updated_at),
                    None if completed_at is None else text(completed, completed_at),  # type: ignore[arg-type]
                )
        except PROJECTION_ERRORS:
            return None
        error = get("error")
        return (
            _text(name, 128),
            _text(workflow_version or "", 64),
            status,
            _text(current or "", 128),
            *times,
            duration,
            done,
            max(total, done),
            revision,
            _summary(error) if error else _summary(failed),
            False,
        )


# A time as the engine writes it (``state.utcnow()``): UTC, to the microsecond.
_UTC_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def _values_apart(reader: PlainReader, document: Any, workflow_id: str) -> Values | None:
    """What :meth:`PlainReader.values` computes, by the projection's own functions."""
    if not plain_document(document, workflow_id):
        return None
    try:
        return comparable(project(document, reader.steps), reader.text_times, reader.tz)
    except PROJECTION_ERRORS:
        return None  # e.g. a time that is not ISO 8601


def can_fork_worker() -> bool:
    """A worker process helps (a spare core) and is safe to fork: fork is available and
    this process has no other thread (a thread holding a lock at the fork would leave
    it locked in the child) and is no daemon (which may not have children)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return (
        cores > 1
        and "fork" in multiprocessing.get_all_start_methods()
        and threading.active_count() == 1
        and not multiprocessing.current_process().daemon
    )


def _claim(claims: Any, front: bool) -> int | None:
    """The index of the next batch nobody has taken, from the front (the worker) or the
    back (this process), or None when all are taken. ``claims`` holds [front, back)."""
    with claims.get_lock():
        low, high = claims[0], claims[1]
        if low >= high:
            return None
        if front:
            claims[0] = low + 1
            return int(low)
        claims[1] = high - 1
        return int(high - 1)


def _worker_main(
    reader: PlainReader,
    batches: list[list[str]],
    results: multiprocessing.queues.Queue[Any],
    credits: Any,
    claims: Any,
) -> None:
    """The worker process of a parallel sync: reads its (inherited) batches from the
    front and queues each result with its index, at most ``SYNC_WORKER_AHEAD`` batches
    ahead of its reader. Ctrl-C is the parent's to handle: it stops (kills) the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        credits.acquire()
        i = _claim(claims, front=True)
        if i is None:
            break
        results.put((i, reader(batches[i])))
    results.close()
    results.join_thread()


def read_batches(
    reader: PlainReader | None, batches: list[list[str]], parallel: bool
) -> Iterator[tuple[list[str], list[tuple[str, Values | None]]]]:
    """Each batch with the plain reader's results for it (every batch once).

    With ``parallel``, a forked worker process reads and parses the batches from the
    front while this one compares and writes, and whenever the worker has no result
    ready this one reads a batch from the back itself (the database side leaves it
    time: both cores read). Batches then come in no particular order. No thread is
    started here: results are received by the caller's own thread when it wants the
    next batch (a receiving thread would contend for the GIL with the database
    writes). If the worker fails or stalls, the remaining batches are read here: a sync
    never fails for want of a worker.
    """
    if reader is None:
        for batch in batches:
            yield batch, [(workflow_id, None) for workflow_id in batch]
        return
    worker = None
    if parallel:
        context = multiprocessing.get_context("fork")
        try:
            results: multiprocessing.queues.Queue[Any] = context.Queue()
            credits = context.Semaphore(SYNC_WORKER_AHEAD)
            claims = context.Array("q", [0, len(batches)])
            worker = context.Process(
                target=_worker_main,
                args=(reader, batches, results, credits, claims),
                name="wfstate-sync-reader",
                daemon=True,
            )
            worker.start()
        except Exception:
            logger.warning("sync: no worker process; reading in this one", exc_info=True)
            worker = None
    left = set(range(len(batches)))  # not yielded yet
    # This process reads a batch itself only for as long as it has waited for the
    # worker's (and not before the worker's first result): when the database side is
    # the slower one it never waits, and reads nothing that would slow it further.
    received = False
    waited = reading = 0.0
    try:
        while worker is not None and left:
            if received and reading < waited and results.empty():
                mine = _claim(claims, front=False)
                if mine is not None:
                    started = time.perf_counter()
                    result = reader(batches[mine])
                    reading += time.perf_counter() - started
                    left.discard(mine)
                    yield batches[mine], result
                    continue
            try:
                started = time.perf_counter()
                i, result = _receive(worker, results)
                waited += time.perf_counter() - started
                credits.release()
            except Exception:
                logger.warning("sync: the worker process failed; reading here", exc_info=True)
                worker.kill()
                worker.join()
                worker = None
            else:
                received = True
                left.discard(i)
                yield batches[i], result
        for i in sorted(left):
            left.discard(i)
            yield batches[i], reader(batches[i])
    finally:
        if worker is not None:
            if worker.is_alive():
                worker.kill()  # the caller stopped early
            worker.join()


def _receive(worker: multiprocessing.process.BaseProcess, results: Any) -> Any:
    """The worker's next result; raises if it died or sent nothing for too long."""
    deadline = time.monotonic() + SYNC_WORKER_TIMEOUT
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            if not worker.is_alive():
                raise RuntimeError(f"the worker exited ({worker.exitcode})") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no batch within {SYNC_WORKER_TIMEOUT:g}s") from None
