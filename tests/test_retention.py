"""Retention: ``prune_workflow_runs`` and ``wfstate.retention`` (issue 14, acceptance 4)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.core.management import call_command

from tests.helpers import call, manage, spawn, wait_for
from wfstate import bundles, index, retention
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState
from wfstate.stores import JSONFileStore, get_store
from wfstate.stores.jsonfile import serialize

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
RECENT = NOW - timedelta(days=2)


def stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_run(
    store: JSONFileStore,
    status: str = "completed",
    ended: datetime = OLD,
    name: str = "demo",
    *,
    big_output: bool = False,
) -> str:
    """A state file as the engine leaves it, written directly (10,000 of them are fast)."""
    state = WorkflowState.new(name, inputs={"who": "x"})
    state.status = RunStatus(status)
    state.started_at = stamp(ended - timedelta(minutes=5))
    state.updated_at = stamp(ended)
    if state.status.is_final:
        state.completed_at = stamp(ended)
    state.states["greet"] = StepResult(
        name="greet", status=StepStatus.COMPLETED, output="hi\n", exit_code=0
    )
    state.current_state = "greet"
    state.revision = 3
    store.directory.mkdir(parents=True, exist_ok=True)
    path = store.directory / f"{state.workflow_id}.json"
    path.write_bytes(serialize(state))
    path.chmod(0o600)
    if big_output:
        store.save_output(state.workflow_id, "greet", "stdout", b"x" * 1000)
    return state.workflow_id


def snapshot(directory: Path) -> dict[str, Any]:
    """Every file under ``directory`` with its bytes and mtime."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            found[str(path.relative_to(directory))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return found


def table() -> dict[str, tuple[str, int]]:
    return {r.workflow_id: (r.status, r.revision) for r in WorkflowRun.objects.all()}


def side_files(store: JSONFileStore, workflow_id: str) -> list[Path]:
    return sorted(store.directory.glob(f"{workflow_id}*"))


@pytest.fixture
def store(wfstate_settings: dict[str, Any]) -> JSONFileStore:
    built = get_store()
    assert isinstance(built, JSONFileStore)
    return built


# --- policies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * 86400), ("12h", 43200), ("1d12h", 129600), ("90m", 5400), ("2w", 1209600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert retention.parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "thirty days", "0d", "5y", "-3d", "3d junk"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(retention.InvalidRetention, match="duration"):
        retention.parse_duration(text)


def test_a_policy_never_names_a_live_status() -> None:
    for status in ("running", "pending", "waiting"):
        with pytest.raises(retention.InvalidRetention, match="never pruned"):
            retention.Policy.from_setting({status: "1d"})
        with pytest.raises(retention.InvalidRetention, match="never pruned"):
            retention.Policy.from_options("1d", [status])


def test_per_workflow_policy_overrides_the_default() -> None:
    policy = retention.Policy.from_setting(
        {"completed": "30d", "workflows": {"nightly": {"completed": "7d", "failed": None}}}
    )
    assert policy.max_age("demo", "completed") == timedelta(days=30)
    assert policy.max_age("nightly", "completed") == timedelta(days=7)
    assert policy.max_age("nightly", "failed") is None
    assert policy.max_age("demo", "failed") is None
    assert policy.max_age("demo", "running") is None


# --- pruning ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_prune_10000_old_runs_keeps_running_recent_and_locked_ones(
    store: JSONFileStore, capsys: pytest.CaptureFixture[str]
) -> None:
    statuses = ("completed", "failed", "cancelled")
    old = [write_run(store, statuses[i % 3]) for i in range(10_000)]
    with_outputs = [write_run(store, big_output=True) for _ in range(5)]
    kept = {
        "running": write_run(store, "running"),
        "pending": write_run(store, "pending"),
        "recent": write_run(store, "completed", RECENT),
        "locked": write_run(store, "completed"),
    }
    # A row that says completed over a file that says running: the file wins.
    drifted = write_run(store, "running")
    index.sync(store)
    WorkflowRun.objects.filter(workflow_id=drifted).update(status="completed")
    kept["drifted"] = drifted
    # Row and file say completed, but somebody executes it (a resume just began).
    with store.run_lock(kept["locked"]):
        started = time.perf_counter()
        code, out, err = call("prune_workflow_runs", "--older-than", "30d", "--json")
        seconds = time.perf_counter() - started
    assert code == 0, err
    report = orjson.loads(out)
    with capsys.disabled():
        print(f"\npruned {report['pruned']} runs in {seconds:.1f}s")
    assert report["pruned"] == len(old) + len(with_outputs)
    assert set(report["skipped"]) == {kept["locked"], drifted}
    assert "run lock" in report["skipped"][kept["locked"]]
    assert "running" in report["skipped"][drifted]

    left = {p.name for p in store.directory.iterdir()}
    assert {f"{w}.json" for w in kept.values()} <= left
    assert not any(name.startswith(old[0]) or name.startswith(old[-1]) for name in left)
    for workflow_id in with_outputs:
        assert side_files(store, workflow_id) == []
    assert {n[:36] for n in left} == set(kept.values())
    rows = table()
    assert set(rows) == set(kept.values())
    assert rows[drifted][0] == "running"  # re-synced from its file
    # Well under the "100,000 in minutes" pace (bench/prune.py measures that).
    assert seconds < 300


@pytest.mark.django_db
def test_dry_run_changes_nothing(store: JSONFileStore) -> None:
    ids = [write_run(store, big_output=(i % 10 == 0)) for i in range(200)]
    write_run(store, "running")
    index.sync(store)
    WorkflowRun.objects.create(
        workflow_id=str(uuid.uuid4()), status="completed", workflow_name="demo", completed_at=OLD
    )
    files, rows = snapshot(store.root), table()
    code, out, err = call("prune_workflow_runs", "--older-than", "30d", "--dry-run", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["dry_run"] is True and sorted(report["pruned_ids"]) == sorted(ids)
    assert len(report["rows_without_file"]) == 1
    assert snapshot(store.root) == files
    assert table() == rows


@pytest.mark.django_db
def test_status_and_workflow_options_narrow_the_prune(store: JSONFileStore) -> None:
    completed = write_run(store, "completed")
    failed = write_run(store, "failed")
    other = write_run(store, "completed", name="fails")
    index.sync(store)
    code, out, err = call(
        "prune_workflow_runs",
        "--older-than",
        "30d",
        "--status",
        "completed",
        "--workflow",
        "demo",
        "--json",
    )
    assert code == 0, err
    assert orjson.loads(out)["pruned_ids"] == [completed]
    assert set(table()) == {failed, other}


@pytest.mark.django_db
def test_the_retention_setting_applies_per_status_and_workflow(
    store: JSONFileStore, settings: Any
) -> None:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "RETENTION": {
            "completed": "30d",
            "failed": "90d",
            "workflows": {"fails": {"completed": "1d"}},
        },
    }
    old_completed = write_run(store, "completed")
    old_failed = write_run(store, "failed")  # 40 days < 90 days: kept
    recent_fails = write_run(store, "completed", RECENT, name="fails")  # 2 days > 1 day
    recent_demo = write_run(store, "completed", RECENT)
    index.sync(store)
    code, out, err = call("prune_workflow_runs", "--workflow", "demo", "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["pruned_ids"] == [old_completed] and report["candidates"] == 1
    code, out, err = call("prune_workflow_runs", "--json")
    assert code == 0, err
    assert orjson.loads(out)["pruned_ids"] == [recent_fails]
    assert set(table()) == {old_failed, recent_demo}


@pytest.mark.django_db
def test_the_scheduler_applies_the_retention_setting(store: JSONFileStore, settings: Any) -> None:
    from wfstate.triggers import scheduler

    old = write_run(store, "completed")
    recent = write_run(store, "completed", RECENT)
    index.sync(store)
    scheduler.one_pass(housekeeping=False, prune=True)  # no RETENTION: nothing removed
    assert set(table()) == {old, recent}
    settings.WFSTATE = {**settings.WFSTATE, "RETENTION": {"completed": "30d"}}
    scheduler.one_pass(housekeeping=False, prune=True)
    assert set(table()) == {recent}
    assert not store.exists(old) and store.exists(recent)


@pytest.mark.django_db
def test_without_a_policy_it_is_a_user_error(store: JSONFileStore) -> None:
    code, _, err = call("prune_workflow_runs")
    assert code == 1 and "RETENTION" in err
    code, _, err = call("prune_workflow_runs", "--older-than", "30d", "--status", "running")
    assert code == 1 and "never pruned" in err


@pytest.mark.django_db
def test_archive_writes_a_bundle_before_removing(store: JSONFileStore, tmp_path: Path) -> None:
    workflow_id = write_run(store, big_output=True)
    index.sync(store)
    original = store.read_bytes(workflow_id)
    code, out, err = call(
        "prune_workflow_runs", "--older-than", "30d", "--archive", str(tmp_path / "arch"), "--json"
    )
    assert code == 0, err
    report = orjson.loads(out)
    assert report["archived"] == {workflow_id: str(tmp_path / "arch" / f"{workflow_id}.tar.gz")}
    bundle = bundles.read_bundle(tmp_path / "arch" / f"{workflow_id}.tar.gz")
    assert bundle.state_bytes == original
    assert bundle.outputs == {"greet.stdout": b"x" * 1000}
    assert not store.exists(workflow_id) and not table()


@pytest.mark.django_db(transaction=True)
def test_sigkill_midway_then_doctor_fix_leaves_no_orphan(
    wfstate_settings: dict[str, Any],
) -> None:
    storage = Path(wfstate_settings["STORAGE_DIR"])
    store = get_store()
    assert isinstance(store, JSONFileStore)
    old = [write_run(store, big_output=(i % 5 == 0)) for i in range(4000)]
    running = write_run(store, "running")
    recent = write_run(store, "completed", RECENT)
    index.sync(store)

    proc = spawn(storage, "prune_workflow_runs", "--older-than", "30d")
    try:
        total = len(old) + 2

        def some_gone() -> bool:
            return len(list(store.directory.glob("*.json"))) < total - 50

        wait_for(some_gone, timeout=120, what="the prune to remove some runs")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    left = {p.name[:-5] for p in store.directory.glob("*.json")}
    assert {running, recent} <= left
    assert len(left) > 2, "the prune finished before the kill: nothing was tested"

    # Side files touched by the killed prune are left alone for ORPHAN_GRACE seconds.
    wait_for(
        lambda: retention.orphan_side_files(store, grace=0) == retention.orphan_side_files(store),
        timeout=30,
        what="the grace period of side files touched by the prune",
    )
    fixed = manage(storage, "doctor", "--fix", "--json", WFSTATE_INDEX_ON_WRITE="1")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    check = manage(storage, "doctor", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    assert orjson.loads(check.stdout)["problems"] == 0

    left = {p.name[:-5] for p in store.directory.glob("*.json")}
    assert set(table()) == left  # no row without a file, no file without a row
    assert retention.orphan_side_files(store, grace=0) == {}
    assert {p.name[:36] for p in store.directory.iterdir()} == left
    # And the next prune finishes the job.
    call_command("prune_workflow_runs", "--older-than", "30d", verbosity=0)
    assert set(table()) == {running, recent}
    assert {p.name[:36] for p in store.directory.iterdir()} == {running, recent}


@pytest.mark.django_db
def test_doctor_finds_and_removes_side_files_of_a_deleted_run(
    store: JSONFileStore, settings: Any
) -> None:
    workflow_id = write_run(store, big_output=True)
    store.request_cancel(workflow_id)
    with store.run_lock(workflow_id):
        pass
    index.sync(store)
    # What a kill inside store.delete() leaves: the state file gone, the rest not.
    store.path_for(workflow_id).unlink()
    assert retention.orphan_side_files(store) == {}  # too young to be an orphan
    orphans = retention.orphan_side_files(store, grace=0)
    assert set(orphans) == {workflow_id} and len(orphans[workflow_id]) == 4
    old = time.time() - 60
    for path in side_files(store, workflow_id):
        os.utime(path, (old, old), follow_symlinks=False)
    code, out, _ = call("doctor", "--json")
    assert code == 1
    assert list(orjson.loads(out)["orphan_side_files"]) == [workflow_id]
    code, out, err = call("doctor", "--fix", "--json")
    assert code == 0, err
    assert orjson.loads(out)["fixed"]["orphan_side_files_removed"] == [workflow_id]
    assert side_files(store, workflow_id) == [] and not table()
