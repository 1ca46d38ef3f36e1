"""The audit trail (issue 14, acceptance 3): each change names its actor and channel."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from tests.helpers import call, manage, spawn, wait_for
from wfstate import audit, runs
from wfstate.stores import get_store

# transaction=True: the engine indexes from a thread of its own.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("wfstate_settings")]


def failed_run() -> str:
    code, out, _ = call("run_workflow", "fails", "--json")
    assert code == 3
    return str(orjson.loads(out)["workflow_id"])


def history(workflow_id: str) -> list[dict[str, Any]]:
    return get_store().load(workflow_id).history


@pytest.fixture
def ada() -> User:
    return User.objects.create_superuser("ada", password="pw")


def test_a_command_start_names_the_host_and_os_user() -> None:
    workflow_id = failed_run()
    (start,) = [e for e in history(workflow_id) if e["event"] == "start"]
    actor = start["actor"]
    assert actor["kind"] == "command" and actor["channel"] == "command"
    assert actor["host"] == socket.gethostname() and actor["os_user"] == getpass.getuser()
    assert actor["by"] == f"command on host {socket.gethostname()} by OS user {getpass.getuser()}"


def test_resume_through_the_admin_names_the_user_and_ip_and_writes_a_log_entry(
    ada: User,
) -> None:
    workflow_id = failed_run()
    client = Client(REMOTE_ADDR="10.1.2.3")
    client.force_login(ada)
    url = reverse("admin:wfstate_workflowrun_resume", args=[workflow_id])
    assert client.post(url, {"from_state": "current"}).status_code == 302
    resume = history(workflow_id)[-1]
    assert resume["event"] == "resume"
    assert resume["actor"] == {
        "kind": "user",
        "channel": "admin",
        "user_id": ada.pk,
        "username": "ada",
        "ip": "10.1.2.3",
        "by": f"user ada (id {ada.pk}) through the admin from 10.1.2.3",
    }
    entry = LogEntry.objects.get()
    assert entry.user == ada and "wfstate: resume" in entry.get_change_message()
    # The admin's run page shows who did it.
    page = client.get(reverse("admin:wfstate_workflowrun_change", args=[workflow_id]))
    assert (
        f"<td>user ada (id {ada.pk}) through the admin from 10.1.2.3</td>" in page.content.decode()
    )


def test_cancel_through_the_api_names_the_user_and_ip(ada: User) -> None:
    state, _ = runs.create_run("api_quick")  # pending: nobody executes it yet
    client = Client(REMOTE_ADDR="192.0.2.7")
    client.force_login(ada)
    response = client.post(f"/api/wfstate/runs/{state.workflow_id}/cancel/")
    assert response.status_code == 202, response.content
    cancel = history(state.workflow_id)[-1]
    assert cancel["event"] == "cancel"
    assert cancel["actor"]["kind"] == "user" and cancel["actor"]["channel"] == "api"
    assert cancel["actor"]["username"] == "ada" and cancel["actor"]["ip"] == "192.0.2.7"
    # The API shows it too.
    detail = client.get(f"/api/wfstate/runs/{state.workflow_id}/").json()
    assert detail["history"][-1]["actor"]["by"].startswith("user ada")
    # And the actor does not leak into the next thing this thread does.
    assert audit.actor()["kind"] == "system"


def test_start_through_the_api_names_the_user(ada: User) -> None:
    client = Client(REMOTE_ADDR="192.0.2.8")
    client.force_login(ada)
    response = client.post(
        "/api/wfstate/runs/", {"workflow_name": "api_quick"}, content_type="application/json"
    )
    assert response.status_code == 202, response.content
    start = history(response.json()["workflow_id"])[0]
    assert start["event"] == "start" and start["actor"]["channel"] == "api"
    assert start["actor"]["ip"] == "192.0.2.8"


def test_resume_and_cancel_through_a_command_process(wfstate_settings: dict[str, Any]) -> None:
    storage = Path(wfstate_settings["STORAGE_DIR"])
    workflow_id = failed_run()
    result = manage(storage, "resume_workflow", workflow_id, "--json")
    assert result.returncode == 3, result.stderr  # it fails again, as it always does
    resume = history(workflow_id)[-1]
    assert resume["event"] == "resume" and resume["actor"]["kind"] == "command"
    assert resume["actor"]["pid"] != os.getpid()  # the child's own

    state, _ = runs.create_run("api_quick")
    result = manage(storage, "cancel_workflow", state.workflow_id)
    assert result.returncode == 0, result.stderr
    cancel = history(state.workflow_id)[-1]
    assert cancel["event"] == "cancel" and cancel["actor"]["channel"] == "command"


def test_cancel_of_a_live_run_through_the_api_is_recorded_when_the_executor_stops(
    ada: User, wfstate_settings: dict[str, Any]
) -> None:
    storage = Path(wfstate_settings["STORAGE_DIR"])
    state, _ = runs.create_run("ten_steps", {"pause": "5"})
    executor = spawn(storage, "recover_workflows")
    store = get_store()
    try:
        wait_for(lambda: store.run_lock_owner(state.workflow_id), what="the executor")
        client = Client(REMOTE_ADDR="198.51.100.4")
        client.force_login(ada)
        response = client.post(f"/api/wfstate/runs/{state.workflow_id}/cancel/")
        assert response.status_code == 202, response.content
        assert response.json()["outcome"] == "requested"
    finally:
        executor.communicate(timeout=60)
    final = store.load(state.workflow_id)
    assert final.status == "cancelled"
    cancel = final.history[-1]
    assert cancel["event"] == "cancel" and cancel["requested"] is True
    assert cancel["actor"]["channel"] == "api" and cancel["actor"]["ip"] == "198.51.100.4"
    assert not list(store.outputs_dir(state.workflow_id).glob(".cancel-request"))


def signal_entries(workflow_id: str) -> list[dict[str, Any]]:
    done = get_store().load(workflow_id)
    if done.status == "waiting":  # the woken task has not run here: do what it does
        done = runs.execute(workflow_id)
    assert done.status == "completed", done.status
    return [e for e in done.history if e["event"] == "signal"]


def test_a_signal_through_the_command_names_the_actor_and_channel(tmp_path: Path) -> None:
    from django.conf import settings

    state = runs.start_run("approval")
    assert state.status == "waiting"
    storage = Path(settings.WFSTATE["STORAGE_DIR"])
    result = manage(
        storage, "signal_workflow", state.workflow_id, "approval", "--payload", '{"approved": true}'
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (entry,) = signal_entries(state.workflow_id)
    assert entry["signal"] == "approval" and entry["state"] == "approve"
    actor = entry["actor"]
    assert actor["kind"] == "command" and actor["channel"] == "command"
    host, user = socket.gethostname(), getpass.getuser()
    assert actor["host"] == host and actor["os_user"] == user
    assert actor["by"] == f"command on host {host} by OS user {user}"
    assert actor["pid"] != os.getpid()  # the command's own process


def test_a_signal_through_the_admin_and_the_api_names_the_user_and_ip(ada: User) -> None:
    from django.contrib.auth.models import Group

    ada.groups.add(Group.objects.get_or_create(name="managers")[0])
    client = Client(REMOTE_ADDR="10.9.8.7")
    client.force_login(ada)
    state = runs.start_run("approval")
    url = reverse("admin:wfstate_workflowrun_signal", args=[state.workflow_id])
    assert client.post(url, {"wf-signal-approved": "on"}).status_code == 302
    (entry,) = signal_entries(state.workflow_id)
    assert entry["actor"]["channel"] == "admin" and entry["actor"]["username"] == "ada"
    assert entry["actor"]["ip"] == "10.9.8.7"
    log = LogEntry.objects.get()
    assert log.user == ada and "wfstate: signal approval" in log.get_change_message()

    other = runs.start_run("approval")
    response = client.post(
        f"/api/wfstate/runs/{other.workflow_id}/signal/",
        {"signal": "approval", "payload": {"approved": True}},
        content_type="application/json",
    )
    assert response.status_code == 202, response.content
    (entry,) = signal_entries(other.workflow_id)
    assert entry["actor"]["kind"] == "user" and entry["actor"]["channel"] == "api"
    assert entry["actor"]["by"] == f"user ada (id {ada.pk}) through the api from 10.9.8.7"


def test_reindex_writes_a_log_entry_and_never_the_file(ada: User) -> None:
    workflow_id = failed_run()
    path = get_store().path_for(workflow_id)
    assert path is not None
    before = path.read_bytes()
    client = Client(REMOTE_ADDR="10.1.2.3")
    client.force_login(ada)
    url = reverse("admin:wfstate_workflowrun_reindex", args=[workflow_id])
    assert client.post(url).status_code == 302
    log = LogEntry.objects.get()
    assert log.user == ada and "wfstate: reindex" in log.get_change_message()
    assert path.read_bytes() == before  # the file is the source of truth: only read
