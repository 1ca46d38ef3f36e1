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
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from wfstate.index._table import Values, comparable
from wfstate.index.projection import StepCounter, plain_document, project
from wfstate.index.rows import PROJECTION_ERRORS

logger = logging.getLogger("wfstate.index")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# How many read batches a sync's worker process may be ahead of the rows written, and
# how long a sync waits for it to send one before it reads the files itself.
SYNC_WORKER_AHEAD = 10
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

    def __call__(self, ids: list[str]) -> list[tuple[str, Values | None]]:
        out: list[tuple[str, Values | None]] = []
        for workflow_id in ids:
            values = None
            data = self.read_raw(workflow_id)
            if data is not None:
                try:
                    document = orjson.loads(data)
                except orjson.JSONDecodeError:
                    document = None
                if document is not None and plain_document(document, workflow_id):
                    try:
                        fields = project(document, self.steps)
                        values = comparable(fields, self.text_times, self.tz)
                    except PROJECTION_ERRORS:
                        values = None  # e.g. a time that is not ISO 8601
            out.append((workflow_id, values))
        return out


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


def _worker_main(
    reader: PlainReader,
    batches: list[list[str]],
    results: multiprocessing.queues.Queue[Any],
    credits: Any,
) -> None:
    """The worker process of a parallel sync: reads its (inherited) batches in order and
    queues each result, at most ``SYNC_WORKER_AHEAD`` batches ahead of its reader.
    Ctrl-C is the parent's to handle: it stops (kills) the worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for batch in batches:
        credits.acquire()
        results.put(reader(batch))
    results.close()
    results.join_thread()


def read_batches(
    reader: PlainReader | None, batches: list[list[str]], parallel: bool
) -> Iterator[list[tuple[str, Values | None]]]:
    """The plain reader's results, batch by batch, in order.

    With ``parallel``, a forked worker process reads and parses them while this one
    compares and writes. No thread is started here: results are received by the
    caller's own thread when it wants the next batch (a receiving thread would contend
    for the GIL with the database writes). If the worker fails or stalls, the remaining
    batches are read here: a sync never fails for want of a worker.
    """
    if reader is None:
        for batch in batches:
            yield [(workflow_id, None) for workflow_id in batch]
        return
    worker = None
    if parallel:
        context = multiprocessing.get_context("fork")
        try:
            results: multiprocessing.queues.Queue[Any] = context.Queue()
            credits = context.Semaphore(SYNC_WORKER_AHEAD)
            worker = context.Process(
                target=_worker_main,
                args=(reader, batches, results, credits),
                name="wfstate-sync-reader",
                daemon=True,
            )
            worker.start()
        except Exception:
            logger.warning("sync: no worker process; reading in this one", exc_info=True)
            worker = None
    try:
        for batch in batches:
            if worker is not None:
                try:
                    result = _receive(worker, results)
                    credits.release()
                except Exception:
                    logger.warning("sync: the worker process failed; reading here", exc_info=True)
                    worker.kill()
                    worker.join()
                    worker = None
                else:
                    yield result
                    continue
            yield reader(batch)
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
