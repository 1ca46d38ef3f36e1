"""Crash loop: a writer SIGKILLed at random moments never leaves a corrupt state file.

Each round starts a fresh writer process (``python -c``), waits until it has
acknowledged at least one save beyond the revision it started from (acks are read from
a pipe, written by the child only after ``save()`` returned), lets it run for a random
few milliseconds (a random kill moment, inside or between saves), SIGKILLs it and reaps
it. Then the file must parse, hold a revision at least the last acknowledged one, be
internally consistent (every byte of it from one revision), and after ``sweep()`` no
temp file may remain. The same harness against a naive in-place writer must find
corruption: the control that proves the harness can fail.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.store_workers import check_document
from wfstate.state import new_workflow_id
from wfstate.stores import JSONFileStore

REPO = Path(__file__).resolve().parent.parent
WRITER = "from tests.store_workers import writer_main; writer_main()"
ACK_TIMEOUT = 30.0  # generous: a cold interpreter on a loaded CI machine


class AckReader:
    """Revisions a child acknowledged, read from its stdout pipe without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.last = 0
        self.eof = False

    def _consume(self, chunk: bytes) -> None:
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.last = max(self.last, int(line))

    def wait_beyond(self, revision: int, timeout: float) -> None:
        """Block until an ack greater than ``revision`` arrives (or fail)."""
        deadline = time.monotonic() + timeout
        while self.last <= revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.eof:
                raise AssertionError(f"writer acknowledged nothing beyond {revision}")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                chunk = os.read(self.fd, 65536)
                self.eof = not chunk
                self._consume(chunk)

    def drain(self) -> None:
        """Read what the (dead) child wrote before it died."""
        while chunk := os.read(self.fd, 65536):
            self._consume(chunk)
        # A partial last line was being written when the kill came: not an ack.


@dataclass
class CrashReport:
    kills: int = 0
    temp_files_left: int = 0  # kills that landed mid-write (a temp file remained)
    failures: list[str] = field(default_factory=list)


def read_revision(path: Path) -> int:
    try:
        document = json.loads(path.read_bytes())
        return int(document["revision"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def crash_loop(root: Path, kills: int, kind: str, seed: int) -> CrashReport:
    """Start, run and SIGKILL a writer ``kills`` times; check the file after each kill."""
    rng = random.Random(seed)
    store = JSONFileStore(root, lock_timeout=5.0)
    workflow_id = new_workflow_id()
    path = store.path_for(workflow_id)
    report = CrashReport()
    acked = 0

    def temp_files() -> list[Path]:
        return [p for p in store.temp_files() if workflow_id in p.name]

    for _ in range(kills):
        start = max(acked, read_revision(path))
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, kind, str(root), workflow_id, str(start)],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        acks = AckReader(proc)
        try:
            acks.wait_beyond(start, ACK_TIMEOUT)
            # A random moment in the next few saves (a 100 KB durable save takes about
            # a millisecond here; a naive rewrite longer): the kill lands before, inside
            # and between the writes.
            if rng.random() < 0.8:
                time.sleep(rng.uniform(0, 0.004))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        acks.drain()
        assert proc.stdout is not None
        proc.stdout.close()
        acked = max(acked, acks.last)
        report.kills += 1
        if temp_files():
            report.temp_files_left += 1
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            report.failures.append(f"kill {report.kills}: unreadable: {exc}")
            continue
        problem = check_document(document, acked)
        if problem:
            report.failures.append(f"kill {report.kills}: {problem}")
            continue
        if kind == "store":
            # The store reads its own file back, and its sweep leaves no temp file.
            assert store.load(workflow_id).revision == document["revision"]
            store.sweep()
            if temp_files():
                report.failures.append(f"kill {report.kills}: temp files survive the sweep")
    return report


def run_parallel(root: Path, kills: int, kind: str, workers: int = 2) -> CrashReport:
    """Split the kills over a few loops (one run each) so that two cores are busy."""
    reports = [CrashReport() for _ in range(workers)]
    base = random.SystemRandom().randrange(1 << 30)

    def loop(i: int) -> None:
        # A directory each: a loop's sweep would otherwise take the other run's write
        # lock for a moment, and the other loop's own sweep would then (rightly) skip
        # its temp file and report it left behind.
        reports[i] = crash_loop(root / f"loop{i}", kills // workers, kind, seed=base + i)

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = CrashReport()
    for r in reports:
        total.kills += r.kills
        total.temp_files_left += r.temp_files_left
        total.failures += r.failures
    return total


@pytest.mark.slow
def test_store_writer_survives_200_sigkills(tmp_path: Path) -> None:
    report = run_parallel(tmp_path / "storage", 220, "store")
    assert report.kills >= 200
    assert report.failures == []
    # Evidence that the kills landed inside writes, not only between them.
    assert report.temp_files_left > 0, report


@pytest.mark.slow
def test_control_naive_in_place_writer_is_caught(tmp_path: Path) -> None:
    report = run_parallel(tmp_path / "storage", 20, "naive")
    assert report.failures, "the harness found no corruption in a naive in-place writer"
