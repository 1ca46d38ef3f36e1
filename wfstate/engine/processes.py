"""Finding and killing a command step's processes after its executor died.

A command step runs as ``/bin/sh -c`` in a session (and so a process group) of its own.
If the executor is SIGKILLed, nothing kills that group: the step lives on as an orphan.
So every process of a step execution carries a token in its environment
(``WFSTATE_STEP_TOKEN``, inherited by everything the shell starts), and the running
step's result records it (``process``: token, host, boot id; see :func:`step_record`).
Whoever next takes the run lock (a resume, a recovery, a worker, a cancel) kills what
carries the token before doing anything else (:func:`reap_orphans`).

Finding the group by token, not by a recorded process group id: the token is known
before the shell starts, so it goes into the step-start checkpoint that is written
anyway, at no extra write (a pgid exists only after the spawn, and recording it would
cost one more save per command step). It is also the sound identity check: a process
group id is reused once the group is gone, and the group's leader (``/bin/sh``) may be
gone while its children live on, so neither a pgid nor the leader's start time proves
that a group is still the step's. A process carrying the token does, and so does its
whole group: a group lives as long as one member does, and its id cannot go to another
group before then. So the groups of the carriers are killed (which also catches members
that dropped their environment), and the carriers themselves (which also catches one
that left the group with ``setsid``).

What the token cannot find: a process that cleared its environment (``env -i``) *and*
whose group has no carrier left. The kernel covers the common case, a shell that
``exec``s such a program: the step's shell is started with ``PR_SET_PDEATHSIG`` =
SIGKILL (:func:`with_pdeathsig`), which survives ``exec``, so it dies with the
executor. That signal only reaches the direct child, and fires when the *thread* that
started it exits, so it complements the token rather than replacing it.

Only processes of this host and this boot can be judged: another host's orphan cannot
be killed from here (it is said so in the run's history), and after a reboot the
orphan is gone. Linux only (``/proc``); elsewhere nothing is recorded or killed.

This module knows nothing of Django.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from wfstate.state import StepStatus, WorkflowState, utcnow

logger = logging.getLogger("wfstate.engine")

TOKEN_VARIABLE = "WFSTATE_STEP_TOKEN"  # noqa: S105 - a variable's name, not a secret
# After SIGTERM, how long an orphan group gets before SIGKILL; then how long we wait for
# its members to be gone. Together well under the 2 s a cancellation is allowed.
TERM_GRACE = 0.5
GONE_TIMEOUT = 1.2
_PROC = "/proc"
_PR_SET_PDEATHSIG = 1


def new_token() -> str:
    """A fresh token for one step execution (put in its environment)."""
    return uuid.uuid4().hex


@cache
def boot_id() -> str | None:
    """This boot's id (Linux), or None where the kernel does not say."""
    try:
        with open(f"{_PROC}/sys/kernel/random/boot_id", encoding="ascii") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def hostname() -> str:
    return socket.gethostname()


def step_record(token: str) -> dict[str, Any] | None:
    """What a running command step's result records to find its processes again.

    ``{"token", "host", "boot_id"}``; None where there is no ``/proc`` to search.
    """
    boot = boot_id()
    if boot is None:
        return None
    return {"token": token, "host": hostname(), "boot_id": boot}


@dataclass(frozen=True)
class _Stat:
    pid: int
    pgid: int
    zombie: bool


def _stat(pid: int) -> _Stat | None:
    """The fields of ``/proc/<pid>/stat`` we need, or None if the process is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its end.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        # fields[0] is field 3 (state), fields[2] field 5 (pgrp).
        return _Stat(pid, int(fields[2]), fields[0] in (b"Z", b"X"))
    except (IndexError, ValueError):
        return None


def _has_token(pid: int, needle: bytes) -> bool:
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as fh:
            return needle in fh.read().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def _pids() -> list[int]:
    try:
        names = os.listdir(_PROC)
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]


def find_step_processes(token: str, groups: frozenset[int] = frozenset()) -> dict[int, int]:
    """The live processes of a step execution: ``{pid: pgid}``.

    Those carrying ``token`` in their environment, and every member of their process
    groups (and of ``groups``: the groups found earlier, whose carriers may be dead by
    now). Zombies are dead: they are left out.
    """
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    me = os.getpid()  # a step may run wfstate itself: never kill the reaper
    live = [s for s in map(_stat, _pids()) if s is not None and not s.zombie and s.pid != me]
    carriers = {s.pid for s in live if _has_token(s.pid, needle)}
    pgids = {s.pgid for s in live if s.pid in carriers} | set(groups)
    return {s.pid: s.pgid for s in live if s.pid in carriers or s.pgid in pgids}


@dataclass
class OrphanReport:
    """What :func:`kill_orphan` found and did, for the run's history."""

    outcome: str  # "killed", "gone", "elsewhere", "survived"
    pgids: list[int]
    pids: list[int] = field(default_factory=list)
    detail: str = ""

    def to_history(self, state_name: str, at: str) -> dict[str, Any]:
        return {
            "event": "orphan",
            "at": at,
            "state": state_name,
            "outcome": self.outcome,
            "pgids": self.pgids,
            "pids": self.pids,
            "detail": self.detail,
        }


def kill_orphan(
    record: dict[str, Any],
    *,
    term_grace: float = TERM_GRACE,
    gone_timeout: float = GONE_TIMEOUT,
) -> OrphanReport:
    """Kill the processes of the step execution ``record`` describes, and wait.

    SIGTERM first (a step may clean up), SIGKILL after ``term_grace``, then wait up to
    ``gone_timeout`` for every one to be gone (a zombie counts as gone). Only call it
    holding the run lock: then no executor of the run is alive, and a step recorded
    as running is an orphan.

    Never raises: a record it cannot act on is reported (``elsewhere``: another host or
    an unreadable record; ``survived``: processes still alive after SIGKILL, such as
    one in uninterruptible sleep).
    """
    token = record.get("token")
    if not isinstance(token, str) or not token:
        return OrphanReport("elsewhere", [], detail=f"unreadable process record {record!r}")
    host, here = record.get("host"), hostname()
    if host != here:
        return OrphanReport(
            "elsewhere",
            [],
            detail=(
                f"the step ran on host {host}; its processes cannot be checked or killed "
                f"from {here}: if that host is up, the step may still be running there"
            ),
        )
    if record.get("boot_id") != boot_id():
        return OrphanReport("gone", [], detail="the host rebooted since the step started")
    found = find_step_processes(token)
    if not found:
        return OrphanReport("gone", [])
    groups = frozenset(found.values())

    def remaining() -> dict[int, int]:
        return find_step_processes(token, groups)

    _signal_all(found, signal.SIGTERM)
    if not _wait(lambda: not remaining(), term_grace):
        _signal_all(remaining(), signal.SIGKILL)
        _wait(lambda: not remaining(), gone_timeout)
    left = remaining()
    if left:
        return OrphanReport(
            "survived",
            sorted(groups),
            sorted(found),
            detail=f"still alive after SIGKILL: {sorted(left)}",
        )
    return OrphanReport("killed", sorted(groups), sorted(found))


def reap_orphans(state: WorkflowState) -> list[OrphanReport]:
    """Kill the processes of every step ``state`` records as running.

    Call it holding the run lock, before the run is executed, rewound or marked
    cancelled: no executor of the run is alive then, so a step recorded ``running``
    with a ``process`` is an orphan. Each group found is noted in ``history`` (an
    ``orphan`` event: what was found, what was killed, what could not be), and a record
    that was dealt with is cleared, so the next holder does not act on it again. The
    caller saves the state.

    Never raises (see :func:`kill_orphan`); a group that could not be killed is logged.
    """
    reports = []
    for entry in state.states.values():
        record = entry.process
        if entry.status != StepStatus.RUNNING or record is None:
            continue
        if isinstance(record, dict):
            report = kill_orphan(record)
        else:
            report = OrphanReport("elsewhere", [], detail=f"unreadable process record {record!r}")
        reports.append(report)
        state.history.append(report.to_history(entry.name, utcnow()))
        if report.outcome in ("killed", "gone"):
            entry.process = None
        if report.outcome == "killed":
            logger.warning(
                "run %s: killed the orphaned process groups %s of step %s (pids %s)",
                state.workflow_id,
                report.pgids,
                entry.name,
                report.pids,
            )
        elif report.outcome != "gone":
            logger.error(
                "run %s: the orphaned process group of step %s may still run: %s",
                state.workflow_id,
                entry.name,
                report.detail,
            )
    return reports


def _signal_all(processes: dict[int, int], sig: signal.Signals) -> None:
    """Signal each group, then each process (one may have left its group: setsid)."""
    own = os.getpgrp()  # a reaper started by the step itself keeps its own group alive
    for pgid in set(processes.values()) - {own}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
    for pid in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


# --- asking the kernel -------------------------------------------------------------------
#
# Two ways to set PR_SET_PDEATHSIG in the child, the cheap one first. ``setpriv`` (from
# util-linux) sets it and execs the shell: about +1 ms per step. A ``preexec_fn`` does it
# without another program, but forces Python to fork() the whole executor instead of
# vfork(), and runs the at-fork hooks: about +7 ms per step with Django loaded (measured
# on a 2-core box), so it is only the fallback where there is no setpriv.


@cache
def _setpriv() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` if this host has one that understands it."""
    if not sys.platform.startswith("linux"):
        return ()
    path = shutil.which("setpriv")
    if path is None:
        return ()
    argv = (path, "--pdeathsig", "KILL", "--")
    try:
        probe = subprocess.run([*argv, "/bin/true"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ()
    return argv if probe.returncode == 0 else ()


@cache
def _prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    return prctl


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` making the child die with SIGKILL when its parent does, or None.

    Everything is looked up here, in the parent: between fork and exec the child does
    nothing but two system calls.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent, getppid, kill, getpid = os.getpid(), os.getppid, os.kill, os.getpid
    option, sigkill = _PR_SET_PDEATHSIG, int(signal.SIGKILL)

    def preexec() -> None:
        prctl(option, sigkill, 0, 0)
        # The parent may have died before prctl took effect: no signal would ever come.
        if getppid() != parent:
            kill(getpid(), sigkill)

    return preexec


def with_pdeathsig(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` and a ``preexec_fn`` for ``Popen`` such that the started process is
    SIGKILLed by the kernel when the thread that started it exits (Linux only).

    Only the direct child gets the signal: whatever it started lives on, which is why
    the process group is recorded and killed too.
    """
    prefix = _setpriv()
    if prefix:
        return [*prefix, *argv], None
    return argv, pdeathsig_preexec()
