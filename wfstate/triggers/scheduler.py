"""The scheduler loop behind ``run_scheduler`` (and one pass of it: ``fire_schedules``).

Any number of schedulers may run, on any hosts, against one database: each tick is
fired once (``schedules.fire_tick``). Besides firing ticks, a pass repairs ticks whose
scheduler died mid-way, wakes runs queued behind a concurrency limit whose slot a
crashed executor freed, and prunes expired idempotency keys.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import close_old_connections

from wfstate.exceptions import WFStateError
from wfstate.triggers import schedules

logger = logging.getLogger("wfstate.scheduler")

# Housekeeping (file schedules, repairs, queues) at most this often; pruning old
# ticks and expired idempotency keys (table scans) much less often.
HOUSEKEEPING_INTERVAL = 5.0
PRUNE_INTERVAL = 600.0


@dataclass
class PassResult:
    fired: list[schedules.Fired] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)


def one_pass(*, housekeeping: bool = True, prune: bool = True) -> PassResult:
    """Fire due ticks (and, with ``housekeeping``, sync file schedules, repair ticks and
    wake queues; with ``prune``, delete old ticks and expired idempotency keys)."""
    from wfstate.triggers import concurrency, idempotency

    result = PassResult()
    if housekeeping:
        schedules.sync_file_schedules()
    result.fired = schedules.fire_due()
    if housekeeping:
        result.repaired = schedules.repair_ticks()
        result.woken = concurrency.wake_queues()
    if prune:
        schedules.prune_ticks()
        idempotency.prune_expired()
        _apply_retention()
    return result


def _apply_retention() -> None:
    """``WFSTATE["RETENTION"]``, when set: the scheduler prunes as it goes (a run is
    removed under its own run lock, so two schedulers pruning at once never clash)."""
    from wfstate import retention
    from wfstate.conf import conf

    if not conf.RETENTION:
        return
    try:
        report = retention.prune_with_settings()
    except WFStateError as exc:
        logger.error("retention not applied: %s", exc)
        return
    if report.pruned:
        logger.info("retention: %d runs pruned", len(report.pruned))


def run_forever(
    *,
    interval: float = 1.0,
    stop: threading.Event | None = None,
    on_pass: Callable[[PassResult], None] | None = None,
) -> None:
    """Loop until ``stop`` is set: a pass, then sleep until the next tick (at most
    ``interval`` seconds). An error in one pass is logged and the loop goes on."""
    stop = stop or threading.Event()
    last_housekeeping = last_prune = -math.inf
    while not stop.is_set():
        close_old_connections()  # a long-lived process: never keep a broken connection
        housekeeping = time.monotonic() - last_housekeeping >= HOUSEKEEPING_INTERVAL
        prune = time.monotonic() - last_prune >= PRUNE_INTERVAL
        try:
            result = one_pass(housekeeping=housekeeping, prune=prune)
            if housekeeping:
                last_housekeeping = time.monotonic()
            if prune:
                last_prune = time.monotonic()
            if on_pass is not None:
                on_pass(result)
            pause = schedules.seconds_until_next(cap=interval)
        except Exception:
            logger.exception("scheduler pass failed; trying again in %.1fs", interval)
            pause = interval
        # Wake a hair after the tick, so it is due when we look.
        stop.wait(pause + 0.005)
