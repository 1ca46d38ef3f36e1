"""Schedules: starting runs by the clock, each tick exactly once however many schedulers run.

The database decides, not the clock (DESIGN "Second wave"): for every due tick a
scheduler inserts ``(schedule, tick)`` into ``ScheduleTick`` under a unique constraint,
and starts the run only if its insert won. Ticks are computed, never counted: a cron
tick is the cron expression's match in the schedule's time zone (``cronsim``), an
``every`` tick a multiple of the period since the Unix epoch, so every scheduler on
every host computes the same instants.

Ticks missed while no scheduler ran (older than a grace period when a scheduler sees
them) follow the schedule's ``catch_up`` policy: ``none`` fires nothing for the outage
(the schedule resumes with its next tick), ``latest`` fires only the most recent due
tick, ``all`` fires each (at most ``MAX_CATCH_UP``).

Schedules come from two places: ``schedule:`` in workflow files (synced into rows,
``source = file``, whose ``enabled`` flag the admin may flip) and rows made in the admin.
"""

from __future__ import annotations

import logging
import math
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cronsim import CronSim, CronSimError
from django.db import IntegrityError, transaction
from django.utils import timezone

from wfstate.exceptions import WFStateError
from wfstate.state import new_workflow_id
from wfstate.triggers.models import CatchUp, Schedule, ScheduleSource, ScheduleTick

logger = logging.getLogger("wfstate.schedules")

# At most this many missed ticks are fired at once with catch_up: all.
MAX_CATCH_UP = 1000
# A tick is "on time" (not missed) when a scheduler sees it within this long: the
# period itself for short periods, bounded to [1 s, 60 s].
MIN_GRACE = 1.0
MAX_GRACE = 60.0
# A tick whose run was not created this long after it was fired: its scheduler died in
# between; ``repair_ticks`` creates the run (the tick row names its id).
REPAIR_AFTER = 30.0
# Tick rows are kept this long (they say which run each tick started), then pruned:
# a tick that old is long behind every schedule's ``last_tick`` and never due again.
TICK_RETENTION = timedelta(days=7)


@dataclass(frozen=True)
class Fired:
    """One tick this scheduler fired (it won the tick's insert)."""

    schedule: str
    tick: datetime
    workflow_id: str
    error: str = ""


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iter_ticks(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """The schedule's ticks strictly after ``after``, in UTC, oldest first (endless).

    Raises:
        ValueError: the schedule's cron expression or time zone is not valid.
    """
    after = _aware(after)
    if schedule.every_seconds:
        period = float(schedule.every_seconds)
        k = math.floor(after.timestamp() / period) + 1
        while True:
            yield datetime.fromtimestamp(k * period, UTC)
            k += 1
    try:
        zone = zoneinfo.ZoneInfo(schedule.timezone or "UTC")
        # cronsim works at minute resolution: start from the minute, skip what is not after.
        start = after.astimezone(zone).replace(second=0, microsecond=0)
        matches = CronSim(schedule.cron, start)
    except (zoneinfo.ZoneInfoNotFoundError, CronSimError, ValueError) as exc:
        raise ValueError(f"schedule {schedule.name}: {exc}") from None
    for match in matches:
        tick = match.astimezone(UTC)
        if tick > after:
            yield tick


def next_ticks(schedule: Schedule, count: int = 3, now: datetime | None = None) -> list[datetime]:
    """The next ``count`` fire times after ``now`` (for the admin); [] if invalid."""
    out: list[datetime] = []
    try:
        for tick in iter_ticks(schedule, now or timezone.now()):
            out.append(tick)
            if len(out) >= count:
                break
    except ValueError:
        return []
    return out


def grace(schedule: Schedule) -> float:
    """Seconds after its instant during which a tick counts as on time, not missed."""
    if schedule.every_seconds:
        return min(MAX_GRACE, max(MIN_GRACE, float(schedule.every_seconds)))
    return MAX_GRACE


def due_ticks(schedule: Schedule, now: datetime) -> list[datetime]:
    """The ticks to fire now under the schedule's ``catch_up`` policy (oldest first).

    Due ticks are those after ``last_tick`` (or after the schedule's creation) and not
    after ``now``; the missed ones among them (older than ``grace``) are kept, reduced
    or dropped by the policy.
    """
    anchor = _aware(schedule.last_tick or schedule.created_at)
    due: list[datetime] = []
    for tick in iter_ticks(schedule, anchor):
        if tick > now:
            break
        due.append(tick)
        if len(due) > MAX_CATCH_UP:
            due.pop(0)  # only the newest MAX_CATCH_UP are ever fired
    if not due:
        return []
    if schedule.catch_up == CatchUp.ALL:
        return due
    if schedule.catch_up == CatchUp.LATEST:
        return due[-1:]
    # none: after an outage (a due tick older than the grace period) nothing fires,
    # not even the tick of the moment; the schedule goes on with its next tick.
    limit = now - timedelta(seconds=grace(schedule))
    if due[0] < limit:
        return []
    return due


def fire_tick(schedule: Schedule, tick: datetime) -> Fired | None:
    """Claim ``tick`` of ``schedule`` and start its run; None when another scheduler
    claimed it first. The run's id is chosen before the claim, so the tick row always
    names the run it starts."""

    workflow_id = new_workflow_id()
    try:
        with transaction.atomic():
            row = ScheduleTick.objects.create(schedule=schedule, tick=tick, workflow_id=workflow_id)
    except IntegrityError:
        return None  # fired by another scheduler (or the schedule was deleted meanwhile)
    try:
        state = _start(schedule, tick, workflow_id)
    except WFStateError as exc:
        # The tick is spent (exactly once), and says why it started nothing.
        logger.error("schedule %s, tick %s: %s", schedule.name, tick.isoformat(), exc)
        ScheduleTick.objects.filter(pk=row.pk).update(error=str(exc)[:2000])
        return Fired(schedule.name, tick, workflow_id, error=str(exc))
    ScheduleTick.objects.filter(pk=row.pk).update(run_created=True)
    return Fired(schedule.name, tick, state.workflow_id)


def _start(schedule: Schedule, tick: datetime, workflow_id: str) -> Any:
    """Create the tick's run with its chosen id, and hand it to the task backend."""
    from wfstate import runs
    from wfstate.definitions import validate_inputs
    from wfstate.tasks import enqueue_execution
    from wfstate.triggers._create import create_if_absent

    definition = runs.get_definition(schedule.workflow_name)
    values = validate_inputs(definition, dict(schedule.inputs or {}))
    started_by = {
        "kind": "schedule",
        "schedule": schedule.name,
        "tick": tick.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }
    state, created = create_if_absent(workflow_id, definition.name, values, started_by=started_by)
    if created:
        enqueue_execution(workflow_id)
    return state


def start_now(schedule: Schedule, *, user: str) -> Any:
    """Start a run of ``schedule`` now, outside its ticks (the admin's action).

    Raises:
        WorkflowNotFound, InvalidDefinition, InvalidInputs, StorageError.
    """
    from wfstate import runs

    started_by = {"kind": "admin", "user": user, "schedule": schedule.name}
    return runs.start_run(
        schedule.workflow_name, dict(schedule.inputs or {}), detach=True, started_by=started_by
    )


def fire_due(now: datetime | None = None) -> list[Fired]:
    """Fire every enabled schedule's due ticks; returns the ticks this call won.

    Safe to call from any number of processes at once: each tick is fired once.
    """
    now = now or timezone.now()
    fired: list[Fired] = []
    for schedule in Schedule.objects.filter(enabled=True):
        try:
            ticks = due_ticks(schedule, now)
        except ValueError as exc:
            logger.error("%s", exc)
            continue
        for tick in ticks:
            result = fire_tick(schedule, tick)
            if result is not None:
                fired.append(result)
        # Remember how far this schedule is dealt with (every due tick, fired or skipped
        # by the policy), moving forward only: a lagging scheduler never moves it back.
        newest = _newest_due(schedule, now)
        if newest is not None:
            Schedule.objects.filter(pk=schedule.pk).filter(_before(newest)).update(last_tick=newest)
    return fired


def _newest_due(schedule: Schedule, now: datetime) -> datetime | None:
    newest = None
    try:
        for tick in iter_ticks(schedule, _aware(schedule.last_tick or schedule.created_at)):
            if tick > now:
                break
            newest = tick
    except ValueError:
        return None
    return newest


def _before(tick: datetime) -> Any:
    from django.db.models import Q

    return Q(last_tick__isnull=True) | Q(last_tick__lt=tick)


def seconds_until_next(now: datetime | None = None, *, cap: float = 1.0) -> float:
    """How long a scheduler may sleep before the next tick of any enabled schedule."""
    now = now or timezone.now()
    best = cap
    for schedule in Schedule.objects.filter(enabled=True):
        upcoming = next_ticks(schedule, 1, now)
        if upcoming:
            best = min(best, max(0.0, (upcoming[0] - now).total_seconds()))
    return best


def repair_ticks(now: datetime | None = None) -> list[str]:
    """Create the runs of ticks whose scheduler died between the claim and the run's
    first checkpoint (the tick names the run's id). Returns the ids created."""
    from wfstate.stores import get_store

    now = now or timezone.now()
    store = get_store()
    created: list[str] = []
    window = ScheduleTick.objects.filter(
        error="",
        run_created=False,
        fired_at__lt=now - timedelta(seconds=REPAIR_AFTER),
        fired_at__gt=now - timedelta(days=1),
    ).select_related("schedule")
    for row in window:
        if store.exists(row.workflow_id):
            continue
        try:
            state = _start(row.schedule, row.tick, row.workflow_id)
        except WFStateError as exc:
            ScheduleTick.objects.filter(pk=row.pk).update(error=str(exc)[:2000])
            continue
        ScheduleTick.objects.filter(pk=row.pk).update(run_created=True)
        created.append(state.workflow_id)
    return created


def prune_ticks(now: datetime | None = None) -> int:
    """Delete tick rows older than ``TICK_RETENTION``; returns how many."""
    cutoff = (now or timezone.now()) - TICK_RETENTION
    deleted, _ = ScheduleTick.objects.filter(tick__lt=cutoff).delete()
    return deleted


# --- schedules declared in workflow files --------------------------------------------------


def sync_file_schedules() -> int:
    """Make the ``source = file`` rows match the ``schedule:`` keys of the definitions.

    A row's ``enabled`` flag is the admin's to flip and is kept; a schedule removed
    from its file loses its row (and its ticks). Returns how many rows changed.
    """
    from wfstate import runs

    wanted: dict[str, dict[str, Any]] = {}
    for definition in runs.list_definitions():
        for spec in definition.schedules:
            if spec.name in wanted:
                logger.warning(
                    "schedule %s is declared by workflows %s and %s; the first one is kept",
                    spec.name,
                    wanted[spec.name]["workflow_name"],
                    definition.name,
                )
                continue
            wanted[spec.name] = {
                "workflow_name": definition.name,
                "cron": spec.cron,
                "every_seconds": spec.every,
                "timezone": spec.timezone,
                "inputs": dict(spec.inputs),
                "catch_up": spec.catch_up,
            }
    changed = 0
    existing = {s.name: s for s in Schedule.objects.filter(name__in=list(wanted))}
    for name, fields in wanted.items():
        row = existing.get(name)
        if row is None:
            try:
                with transaction.atomic():
                    Schedule.objects.create(name=name, source=ScheduleSource.FILE, **fields)
                changed += 1
            except IntegrityError:
                pass  # another scheduler made it just now
            continue
        if row.source != ScheduleSource.FILE:
            logger.warning(
                "schedule %s of workflow %s: an admin schedule has that name; "
                "the file's is ignored",
                name,
                fields["workflow_name"],
            )
            continue
        if any(getattr(row, key) != value for key, value in fields.items()):
            Schedule.objects.filter(pk=row.pk).update(**fields)
            changed += 1
    stale = Schedule.objects.filter(source=ScheduleSource.FILE).exclude(name__in=list(wanted))
    deleted, _ = stale.delete()
    return changed + deleted


__all__ = [
    "Fired",
    "due_ticks",
    "fire_due",
    "fire_tick",
    "grace",
    "iter_ticks",
    "next_ticks",
    "prune_ticks",
    "repair_ticks",
    "seconds_until_next",
    "start_now",
    "sync_file_schedules",
]
