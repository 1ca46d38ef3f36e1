"""``POST runs/{id}/signal/`` (SPEC §11): answering a waiting run over HTTP.

A real ``db_worker`` takes the run to its wait step, where it parks (no process holds
it); the signal wakes it through the task backend and the payload chooses the branch.
Every response is checked against the served OpenAPI schema (tests/test_api.py's client).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from tests.helpers import API, assert_conforms, openapi_schema, spawn, wait_for
from wfstate import runs
from wfstate.state import RunStatus
from wfstate.stores import get_store

pytestmark = pytest.mark.usefixtures("wfstate_settings")


class API_:
    """A JSON client that checks every response against the served OpenAPI schema."""

    def __init__(self, client: Client, schema: dict[str, Any]) -> None:
        self.client = client
        self.schema = schema

    def call(self, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        url = path if path.startswith("/") else API + path
        kwargs: dict[str, Any] = dict(extra)
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        response = getattr(self.client, method.lower())(url, **kwargs)
        assert response.status_code < 500, response.content
        assert_conforms(self.schema, method, url, response)
        return response

    def get(self, path: str, **extra: Any) -> Any:
        return self.call("GET", path, **extra)

    def post(self, path: str, body: Any = None, **extra: Any) -> Any:
        return self.call("POST", path, {} if body is None else body, **extra)


@pytest.fixture
def worker(
    transactional_db: None, wfstate_settings: dict[str, Any]
) -> Iterator[subprocess.Popen[str]]:
    """``manage.py db_worker`` on this test's database and storage."""
    proc = spawn(
        Path(wfstate_settings["STORAGE_DIR"]),
        "db_worker",
        "--interval",
        "0.05",
        "--no-startup-delay",
        "--no-reload",
        WFSTATE_INDEX_ON_WRITE="1",
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def wait_for_status(
    api: API_, workflow_id: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        body = api.get(f"runs/{workflow_id}/").json()
        return body if body["status"] in statuses else None

    return wait_for(check, timeout, f"run {workflow_id} to reach {statuses}")


def index_follows(api: API_, run_id: str, status: str) -> None:
    """Wait for the worker's index row (written after the run lock is released), so no
    row lands after this test's tables are flushed."""
    wait_for(
        lambda: (
            [r["status"] for r in api.get(f"runs/?search={run_id}").json()["results"]] == [status]
        ),
        30,
        f"the index to say {status}",
    )


def api_for(user: Any) -> API_:
    client = Client()
    client.force_login(user)
    return API_(client, openapi_schema(client))


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_waiting_run_is_answered_over_http_and_a_real_worker_finishes_it(
    admin_user: Any, worker: subprocess.Popen[str]
) -> None:
    api = api_for(admin_user)
    started = api.post("runs/", {"workflow_name": "approval", "inputs": {"item": "crate"}})
    run_id = started.json()["workflow_id"]
    parked = wait_for_status(api, run_id, {"waiting", "completed", "failed"}, timeout=60)
    assert parked["status"] == "waiting", parked
    assert parked["states"]["approve"]["status"] == "waiting"
    assert parked["waiting_for"]["signal"] == "approval"
    # Parked: the worker's execution ended and nobody holds the run lock (we take it).
    store = get_store()
    assert store.run_lock_owner(run_id) is None
    with store.run_lock(run_id):
        pass
    listed = api.get(f"runs/?status=waiting&search={run_id}").json()["results"]
    assert [r["workflow_id"] for r in listed] == [run_id]

    # A payload failing the schema: 400, and nothing changes.
    bad = api.post(f"runs/{run_id}/signal/", {"signal": "approval", "payload": {"approved": 3}})
    assert bad.status_code == 400, bad.json()
    assert bad.json()["code"] == "invalid_signal"
    assert "approved" in bad.json()["detail"]
    assert api.get(f"runs/{run_id}/").json()["revision"] == parked["revision"]
    assert store.pending_signals(run_id) == []
    # A signal no step waits for: 409.
    odd = api.post(f"runs/{run_id}/signal/", {"signal": "bogus", "payload": {}})
    assert odd.status_code == 409 and odd.json()["code"] == "signal_refused"

    sent = api.post(
        f"runs/{run_id}/signal/",
        {"signal": "approval", "payload": {"approved": True, "comment": "go"}},
        REMOTE_ADDR="10.1.2.3",
    )
    assert sent.status_code == 202, sent.json()
    record = sent.json()["signal"]
    done = wait_for_status(api, run_id, {"completed", "failed", "cancelled"}, timeout=60)
    assert done["status"] == "completed", done
    assert done["current_state"] == "shipped"
    approve = done["states"]["approve"]
    assert approve["payload"] == approve["output"] == {"approved": True, "comment": "go"}
    assert approve["signal_id"] == record["id"]
    assert approve["sender"] == {
        "kind": "api",
        "user": admin_user.get_username(),
        "remote_addr": "10.1.2.3",
    }
    assert done["states"]["ship"]["output"] == "shipping crate, approved by go\n"

    # A second signal for the step: refused, never applied twice.
    again = api.post(f"runs/{run_id}/signal/", {"signal": "approval", "payload": {"approved": 0}})
    assert again.status_code == 409
    assert api.get(f"runs/{run_id}/").json()["states"]["approve"]["signal_id"] == record["id"]
    index_follows(api, run_id, "completed")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_payload_chooses_the_other_branch(
    admin_user: Any, worker: subprocess.Popen[str]
) -> None:
    api = api_for(admin_user)
    run_id = api.post("runs/", {"workflow_name": "approval"}).json()["workflow_id"]
    wait_for_status(api, run_id, {"waiting"}, timeout=60)
    sent = api.post(
        f"runs/{run_id}/signal/", {"signal": "approval", "payload": {"approved": False}}
    )
    assert sent.status_code == 202
    done = wait_for_status(api, run_id, {"completed", "failed", "cancelled"}, timeout=60)
    assert done["status"] == "failed" and done["current_state"] == "rejected"
    assert "ship" not in done["states"]
    index_follows(api, run_id, "failed")


@pytest.mark.django_db(transaction=True)  # the runs' index rows are committed
def test_signal_errors(admin_client: Client) -> None:
    api = API_(admin_client, openapi_schema(admin_client))
    missing = api.post("runs/7d3c2a3e-1111-4222-8333-444455556666/signal/", {"signal": "x"})
    assert missing.status_code == 404
    state = runs.start_run("approval")
    assert state.status == RunStatus.WAITING
    no_name = api.post(f"runs/{state.workflow_id}/signal/", {"payload": {}})
    assert no_name.status_code == 400 and "signal" in no_name.json()["errors"]
    # Sent before anything could run it: a pending run of the workflow takes it later.
    pending, _ = runs.create_run("approval")
    early = api.post(
        f"runs/{pending.workflow_id}/signal/", {"signal": "approval", "payload": {"approved": True}}
    )
    assert early.status_code == 202
    assert runs.execute(pending.workflow_id).status == RunStatus.COMPLETED
