"""Schedules (issue 13): ticks computed the same everywhere, each fired exactly once.

The acceptance tests start real ``run_scheduler`` processes against the test database
(SQLite file, or PostgreSQL in the PostgreSQL pass of ``make test``) and span real
time (ticks every second); they assert on tick counts with the tolerance the issue
gives, and poll for conditions.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.helpers import call, manage, spawn, wait_for
from wfstate import runs
from wfstate.definitions import loads_definition
from wfstate.exceptions import InvalidDefinition
from wfstate.stores import get_store
from wfstate.triggers import schedules
from wfstate.triggers.models import Schedule, ScheduleSource, ScheduleTick

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("wfstate_settings")]

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)


def every_second(name: str, catch_up: str = "all", **fields: Any) -> Schedule:
    return Schedule.objects.create(
        name=name,
        workflow_name="api_quick",
        every_seconds=1,
        catch_up=catch_up,
        inputs={"who": name},
        **fields,
    )


# --- ticks --------------------------------------------------------------------------------


def test_every_ticks_are_aligned_on_the_epoch() -> None:
    schedule = Schedule(name="e", every_seconds=600)
    ticks = schedules.iter_ticks(schedule, T0 + timedelta(minutes=3))
    assert [next(ticks) for _ in range(2)] == [
        T0 + timedelta(minutes=10),
        T0 + timedelta(minutes=20),
    ]
    # Strictly after: a tick instant itself is not due again.
    assert next(schedules.iter_ticks(schedule, T0)) == T0 + timedelta(minutes=10)


def test_cron_ticks_follow_the_time_zone_across_daylight_saving() -> None:
    schedule = Schedule(name="c", cron="0 2 * * *", timezone="Europe/Paris")
    ticks = schedules.iter_ticks(schedule, datetime(2026, 3, 27, 12, tzinfo=UTC))
    assert [next(ticks) for _ in range(3)] == [
        datetime(2026, 3, 28, 1, tzinfo=UTC),  # 02:00 CET
        datetime(2026, 3, 29, 1, tzinfo=UTC),  # 02:00 does not exist: 03:00 CEST
        datetime(2026, 3, 30, 0, tzinfo=UTC),  # 02:00 CEST
    ]


def test_an_invalid_schedule_names_itself() -> None:
    with pytest.raises(ValueError, match="schedule broken"):
        next(schedules.iter_ticks(Schedule(name="broken", cron="61 * * * *"), T0))
    assert schedules.next_ticks(Schedule(name="broken", cron="bad"), 3, T0) == []


# --- firing -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_each_due_tick_fires_once_and_names_its_run() -> None:
    schedule = every_second("s1", created_at=T0)
    fired = schedules.fire_due(T0 + timedelta(seconds=3.5))
    assert [f.tick for f in fired] == [T0 + timedelta(seconds=i) for i in (1, 2, 3)]
    assert schedules.fire_due(T0 + timedelta(seconds=3.5)) == []  # nothing fires twice
    # Even a scheduler that lags behind (it saw last_tick before the others moved it).
    schedule.refresh_from_db()
    assert schedule.last_tick == T0 + timedelta(seconds=3)
    schedule.last_tick = None
    assert all(schedules.fire_tick(schedule, f.tick) is None for f in fired)

    for result in fired:
        state = runs.load_run(result.workflow_id)
        assert state.status == "pending"
        assert state.inputs["who"] == "s1"
        assert state.started_by == {
            "kind": "schedule",
            "schedule": "s1",
            "tick": result.tick.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        row = ScheduleTick.objects.get(schedule=schedule, tick=result.tick)
        assert row.workflow_id == result.workflow_id
    assert len(get_store().list()) == 3


@pytest.mark.django_db
def test_the_run_page_says_which_schedule_and_tick_started_it(admin_client: Client) -> None:
    every_second("shown", created_at=T0)
    (result,) = schedules.fire_due(T0 + timedelta(seconds=1.5))
    page = admin_client.get(
        reverse("admin:wfstate_workflowrun_change", args=[result.workflow_id])
    ).content.decode()
    assert "Started by" in page
    assert "<th>kind</th><td><code>schedule</code></td>" in page
    assert "<th>schedule</th><td><code>shown</code></td>" in page
    assert result.tick.strftime("%Y-%m-%dT%H:%M:%S") in page


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("catch_up", "expected"),
    [("all", [1, 2, 3, 4, 5]), ("latest", [5]), ("none", [])],
)
def test_missed_ticks_follow_the_catch_up_policy(catch_up: str, expected: list[int]) -> None:
    every_second("p", catch_up, created_at=T0 - timedelta(hours=1), last_tick=T0)
    fired = schedules.fire_due(T0 + timedelta(seconds=5.2))
    assert [f.tick for f in fired] == [T0 + timedelta(seconds=i) for i in expected]
    # Every policy then goes on with the next tick, on time.
    again = schedules.fire_due(T0 + timedelta(seconds=6.1))
    assert [f.tick for f in again] == [T0 + timedelta(seconds=6)]


@pytest.mark.django_db
def test_disabled_schedules_do_not_fire() -> None:
    every_second("off", enabled=False, created_at=T0)
    assert schedules.fire_due(T0 + timedelta(seconds=5)) == []


@pytest.mark.django_db
def test_a_tick_whose_workflow_is_gone_records_the_error() -> None:
    schedule = Schedule.objects.create(
        name="ghost", workflow_name="no_such_workflow", every_seconds=1, created_at=T0
    )
    fired = schedules.fire_due(T0 + timedelta(seconds=1.5))
    assert len(fired) == 1
    assert "no_such_workflow" in fired[0].error
    assert "no_such_workflow" in ScheduleTick.objects.get(schedule=schedule).error
    assert schedules.fire_due(T0 + timedelta(seconds=1.5)) == []  # spent, not retried


@pytest.mark.django_db
def test_a_tick_whose_scheduler_died_before_the_run_existed_is_repaired() -> None:
    schedule = every_second("crashed", created_at=T0)
    row = ScheduleTick.objects.create(
        schedule=schedule,
        tick=T0 + timedelta(seconds=1),
        workflow_id="6a1f0a8e-2b1d-4c1e-8f5e-2d7a0c9b4e11",
        fired_at=timezone.now() - timedelta(seconds=schedules.REPAIR_AFTER + 1),
    )
    assert not get_store().exists(row.workflow_id)
    assert schedules.repair_ticks() == [row.workflow_id]
    state = runs.load_run(row.workflow_id)
    assert state.started_by is not None
    assert state.started_by["schedule"] == "crashed"
    assert schedules.repair_ticks() == []  # exists now
    # A run the user deleted afterwards is not made again.
    runs.delete_run(row.workflow_id)
    assert schedules.repair_ticks() == []


@pytest.mark.django_db
def test_a_deleted_scheduled_run_is_not_repaired() -> None:
    schedule = every_second("deleted", created_at=T0)
    (result,) = schedules.fire_due(T0 + timedelta(seconds=1.5))
    runs.delete_run(result.workflow_id)
    ScheduleTick.objects.filter(schedule=schedule).update(
        fired_at=timezone.now() - timedelta(seconds=schedules.REPAIR_AFTER + 1)
    )
    assert schedules.repair_ticks() == []
    assert not get_store().exists(result.workflow_id)


@pytest.mark.django_db
def test_old_ticks_are_pruned_and_never_fire_again() -> None:
    schedule = every_second("old", created_at=T0)
    schedules.fire_due(T0 + timedelta(seconds=2.5))
    now = T0 + schedules.TICK_RETENTION + timedelta(seconds=1.5)
    assert schedules.prune_ticks(now) == 1  # the tick at T0+1 (T0+2 is younger)
    schedule.refresh_from_db()
    assert schedule.last_tick == T0 + timedelta(seconds=2)
    # last_tick, not the rows, says what is done: with catch_up latest only the newest.
    Schedule.objects.filter(pk=schedule.pk).update(catch_up="latest")
    assert [f.tick for f in schedules.fire_due(now)] == [now - timedelta(seconds=0.5)]


# --- schedules in workflow files ------------------------------------------------------------


SCHEDULED = """\
name: nightly
inputs:
  - {name: who, type: string, default: nobody}
schedule:
  - cron: "0 2 * * *"
    timezone: Europe/Paris
    inputs: {who: paris}
  - name: often
    every: 10m
    catch_up: none
states:
  initial: a
  a: {type: step, command: "true", on_success: done}
  done: {type: terminal}
"""


def test_schedule_keys_are_validated_with_file_and_line() -> None:
    bad = SCHEDULED.replace('"0 2 * * *"', '"0 2 * *"').replace("Europe/Paris", "Mars/Base")
    bad = bad.replace("every: 10m", "every: 10m\n    cron: '* * * * *'")
    with pytest.raises(InvalidDefinition) as info:
        loads_definition(bad)
    lines = {(e["line"], e["message"].split(" ")[0]) for e in info.value.errors}
    text = str(info.value)
    assert "cron expression '0 2 * *' is not valid" in text
    assert "time zone 'Mars/Base' is unknown" in text
    assert any(line == 5 for line, _ in lines)
    assert len(info.value.errors) == 3  # cron and every together: the schema says one of


@pytest.mark.django_db
def test_file_schedules_are_synced_and_keep_their_enabled_flag(
    settings: Any, tmp_path: Path
) -> None:
    directory = tmp_path / "wf"
    directory.mkdir()
    (directory / "nightly.yaml").write_text(SCHEDULED)
    settings.WFSTATE = {
        **settings.WFSTATE,
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], directory],
    }
    assert schedules.sync_file_schedules() == 2
    assert schedules.sync_file_schedules() == 0  # nothing changed: nothing written
    first = Schedule.objects.get(name="nightly-1")
    assert (first.cron, first.timezone, first.inputs) == (
        "0 2 * * *",
        "Europe/Paris",
        {"who": "paris"},
    )
    assert first.source == ScheduleSource.FILE
    often = Schedule.objects.get(name="often")
    assert (often.every_seconds, often.catch_up) == (600.0, "none")
    Schedule.objects.filter(name="often").update(enabled=False)  # the admin switched it off
    (directory / "nightly.yaml").write_text(SCHEDULED.replace("every: 10m", "every: 5m"))
    assert schedules.sync_file_schedules() == 1
    often.refresh_from_db()
    assert (often.every_seconds, often.enabled) == (300.0, False)
    (directory / "nightly.yaml").write_text(
        SCHEDULED.split("schedule:")[0] + "states:" + SCHEDULED.split("states:")[1]
    )
    schedules.sync_file_schedules()
    assert not Schedule.objects.filter(source=ScheduleSource.FILE).exists()


# --- admin ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_admin_lists_schedules_with_their_next_fire_times(admin_client: Client) -> None:
    Schedule.objects.create(name="nightly-x", workflow_name="api_quick", cron="0 2 * * *")
    every_second("fast")
    response = admin_client.get("/admin/wfstate/schedule/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "nightly-x" in page
    assert "fast" in page
    upcoming = schedules.next_ticks(Schedule.objects.get(name="nightly-x"), 1)[0]
    assert upcoming.strftime("%Y-%m-%d 02:00") in page
    detail = admin_client.get(
        f"/admin/wfstate/schedule/{Schedule.objects.get(name='fast').pk}/change/"
    )
    assert detail.status_code == 200
    # Disable from the list.
    pk = Schedule.objects.get(name="fast").pk
    response = admin_client.post(
        "/admin/wfstate/schedule/",
        {"action": "disable_schedules", "_selected_action": [pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert not Schedule.objects.get(pk=pk).enabled
    # Start one now: the run says the admin user started it, from which schedule.
    response = admin_client.post(
        "/admin/wfstate/schedule/",
        {"action": "start_now", "_selected_action": [pk]},
        follow=True,
    )
    assert "1 run started." in response.content.decode()
    (workflow_id,) = get_store().list()
    assert runs.load_run(workflow_id).started_by == {
        "kind": "admin",
        "user": "admin",
        "schedule": "fast",
    }


@pytest.mark.django_db
def test_the_api_lists_schedules_with_their_next_fire_times(admin_client: Client) -> None:
    from tests.helpers import API, assert_conforms, openapi_schema

    schema = openapi_schema(admin_client)
    Schedule.objects.create(name="nightly-x", workflow_name="api_quick", cron="0 2 * * *")
    every_second("off", enabled=False)
    response = admin_client.get(f"{API}schedules/")
    assert response.status_code == 200
    assert_conforms(schema, "get", f"{API}schedules/", response)
    by_name = {s["name"]: s for s in response.json()}
    assert len(by_name["nightly-x"]["next_fire_times"]) == 3
    assert by_name["nightly-x"]["next_fire_times"][0].endswith("T02:00:00.000000Z")
    assert by_name["off"]["next_fire_times"] == []
    one = admin_client.get(f"{API}schedules/nightly-x/")
    assert one.status_code == 200
    assert_conforms(schema, "get", f"{API}schedules/nightly-x/", one)
    missing = admin_client.get(f"{API}schedules/nope/")
    assert missing.status_code == 404
    assert_conforms(schema, "get", f"{API}schedules/nope/", missing)
    assert Client().get(f"{API}schedules/").status_code in (401, 403)


@pytest.mark.django_db
def test_an_admin_schedule_with_a_bad_cron_is_refused(admin_client: Client) -> None:
    response = admin_client.post(
        "/admin/wfstate/schedule/add/",
        {
            "name": "bad",
            "workflow_name": "api_quick",
            "cron": "0 25 * * *",
            "timezone": "UTC",
            "inputs": "{}",
            "catch_up": "latest",
            "enabled": "on",
        },
    )
    assert response.status_code == 200
    assert "is not valid" in response.content.decode()
    assert not Schedule.objects.filter(name="bad").exists()


# --- commands, real processes ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_fire_schedules_json(tmp_path: Path) -> None:
    every_second("cli", created_at=timezone.now() - timedelta(seconds=2.5))
    code, out, err = call("fire_schedules", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert 2 <= len(data["fired"]) <= 3
    assert all(f["schedule"] == "cli" and f["error"] is None for f in data["fired"])
    code, out, _err = call("fire_schedules", "--json")
    assert all(f["tick"] not in out for f in data["fired"])


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _first_line(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """The process's first line of output, waiting at most ``timeout`` for it."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"process {proc.pid} printed nothing within {timeout}s")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(
            f"process {proc.pid} ended: {proc.stderr.read() if proc.stderr else ''}"
        )
    return line


def _wait_until(instant: datetime) -> None:
    """Wait for wall-clock time to pass ``instant`` (the condition is the time itself)."""
    wait_for(lambda: timezone.now() >= instant, 120, f"the clock to pass {instant}")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_three_schedulers_fire_each_tick_of_ten_seconds_once(tmp_path: Path) -> None:
    """Acceptance 1: three run_scheduler processes, a schedule every second, 10 s."""
    storage = tmp_path / "storage"
    schedule = every_second("race")
    procs = [spawn(storage, "run_scheduler", "--interval", "0.2") for _ in range(3)]
    try:
        # All three are up once each has printed its first line.
        for proc in procs:
            assert "scheduler started" in _first_line(proc)
        start = timezone.now().replace(microsecond=0) + timedelta(seconds=1)
        end = start + timedelta(seconds=10)
        _wait_until(end + timedelta(seconds=1.5))
    finally:
        _stop(procs)
    outputs = [p.stdout.read() if p.stdout else "" for p in procs]  # type: ignore[union-attr]
    ticks = list(
        ScheduleTick.objects.filter(schedule=schedule, tick__gte=start, tick__lt=end)
        .order_by("tick")
        .values_list("tick", "workflow_id", "error")
    )
    assert 9 <= len(ticks) <= 11, (ticks, outputs)
    assert len({t for t, _w, _e in ticks}) == len(ticks)  # no tick twice
    assert [e for _t, _w, e in ticks if e] == []
    # Every second of the window fired: none missed, none twice.
    assert [t for t, _w, _e in ticks] == [start + timedelta(seconds=i) for i in range(10)]
    # Each tick started exactly one run, which names it.
    states = [runs.load_run(w) for _t, w, _e in ticks]
    assert [s.started_by["tick"] for s in states if s.started_by] == [
        t.strftime("%Y-%m-%dT%H:%M:%S.%fZ") for t, _w, _e in ticks
    ]
    all_runs = [get_store().load(i) for i in get_store().list()]
    by_tick = [s.started_by["tick"] for s in all_runs if s.started_by]
    assert len(by_tick) == len(set(by_tick)) == ScheduleTick.objects.count()
    # The work was shared: more than one scheduler won ticks (not required, but the
    # test would prove less if one process did everything).
    assert sum(1 for out in outputs if "tick" in out) >= 1


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_ticks_missed_while_no_scheduler_ran_follow_each_policy(tmp_path: Path) -> None:
    """Acceptance 1, second half: stop every scheduler for 5 s, then fire once."""
    storage = tmp_path / "storage"
    for policy in ("none", "latest", "all"):
        every_second(f"gap-{policy}", policy)
    proc = spawn(storage, "run_scheduler", "--interval", "0.2")
    try:
        assert "scheduler started" in _first_line(proc)
        wait_for(
            lambda: all(
                ScheduleTick.objects.filter(schedule__name=f"gap-{p}").exists()
                for p in ("none", "latest", "all")
            ),
            60,
            "each schedule to fire while the scheduler runs",
        )
    finally:
        _stop([proc])
    last = {s.name: s.last_tick for s in Schedule.objects.all()}
    stopped = timezone.now()
    _wait_until(stopped + timedelta(seconds=5))
    result = manage(storage, "fire_schedules", "--json")
    assert result.returncode == 0, result.stderr
    fired = json.loads(result.stdout)["fired"]
    after = timezone.now()
    by_policy: dict[str, list[datetime]] = {p: [] for p in ("none", "latest", "all")}
    for entry in fired:
        by_policy[entry["schedule"].removeprefix("gap-")].append(
            datetime.fromisoformat(entry["tick"])
        )
    assert by_policy["none"] == []
    assert len(by_policy["latest"]) == 1
    assert by_policy["latest"][0] > stopped
    # all: every tick since the last one fired before the stop, none twice.
    first = last["gap-all"]
    assert first is not None
    expected = []
    tick = first + timedelta(seconds=1)
    while tick <= after:
        expected.append(tick)
        tick += timedelta(seconds=1)
    assert by_policy["all"] == expected[: len(by_policy["all"])]
    assert len(by_policy["all"]) >= 5
    assert connection.vendor in ("sqlite", "postgresql")
