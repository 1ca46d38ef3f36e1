"""Idempotency keys (issue 13): one start per (workflow, key), racing or crashing.

The races are real: threads with their own database connections and test clients,
and ``run_workflow`` processes; the crash is a real SIGKILL between the key's
reservation and the run's first checkpoint (the ``WFSTATE_TEST_CRASH_AFTER_RESERVE``
hook). Also in the PostgreSQL pass of ``make test``.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from tests.helpers import API, assert_conforms, call, manage, openapi_schema, spawn
from wfstate import runs
from wfstate.exceptions import IdempotencyConflict, InvalidInputs
from wfstate.stores import get_store
from wfstate.triggers.idempotency import CRASH_AFTER_RESERVE_ENV
from wfstate.triggers.models import IdempotencyKey

pytestmark = [pytest.mark.postgres, pytest.mark.usefixtures("wfstate_settings")]

RUNS = f"{API}runs/"


def post(client: Client, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(RUNS, body, content_type="application/json", **headers)


@pytest.mark.django_db
def test_a_repeated_key_returns_the_first_run_with_200(admin_client: Client) -> None:
    schema = openapi_schema(admin_client)
    body = {"workflow_name": "api_quick", "inputs": {"who": "ada"}}
    first = post(admin_client, body, key="order-1")
    assert first.status_code == 202, first.content
    again = post(admin_client, body, key="order-1")
    assert again.status_code == 200, again.content
    assert again.json()["workflow_id"] == first.json()["workflow_id"]
    assert again["Location"] == first["Location"]
    assert_conforms(schema, "post", RUNS, again)
    assert_conforms(schema, "post", RUNS, first)
    # Another key, or none: new runs.
    assert post(admin_client, body, key="order-2").status_code == 202
    assert post(admin_client, body).status_code == 202
    assert len(get_store().list()) == 3
    started_by = first.json()["started_by"]
    assert started_by == {"kind": "api", "user": "admin", "idempotency_key": "order-1"}


@pytest.mark.django_db
def test_the_key_may_come_in_the_body(admin_client: Client) -> None:
    body = {"workflow_name": "api_quick", "inputs": {}, "idempotency_key": "body-key"}
    first = post(admin_client, body)
    again = post(admin_client, body)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["workflow_id"] == first.json()["workflow_id"]


@pytest.mark.django_db
def test_the_same_key_with_other_inputs_is_a_409(admin_client: Client) -> None:
    schema = openapi_schema(admin_client)
    first = post(admin_client, {"workflow_name": "api_quick", "inputs": {"who": "a"}}, key="k")
    other = post(admin_client, {"workflow_name": "api_quick", "inputs": {"who": "b"}}, key="k")
    assert other.status_code == 409, other.content
    assert other.json()["code"] == "idempotency_conflict"
    assert first.json()["workflow_id"] in other.json()["detail"]
    assert_conforms(schema, "post", RUNS, other)
    # Defaults count as given: {} and {"who": "world"} are the same inputs.
    plain = post(admin_client, {"workflow_name": "api_quick", "inputs": {}}, key="d")
    same = post(admin_client, {"workflow_name": "api_quick", "inputs": {"who": "world"}}, key="d")
    assert (plain.status_code, same.status_code) == (202, 200)


@pytest.mark.django_db
def test_a_key_belongs_to_one_workflow(admin_client: Client) -> None:
    quick = post(admin_client, {"workflow_name": "api_quick"}, key="shared")
    other = post(admin_client, {"workflow_name": "fails"}, key="shared")
    assert (quick.status_code, other.status_code) == (202, 202)
    assert quick.json()["workflow_id"] != other.json()["workflow_id"]


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é"])
def test_malformed_keys_are_refused(admin_client: Client, key: str) -> None:
    with pytest.raises(InvalidInputs, match="idempotency key"):
        runs.start_run("api_quick", detach=True, idempotency_key=key)
    assert get_store().list() == []


@pytest.mark.django_db
def test_a_key_past_its_retention_starts_a_new_run(settings: Any) -> None:
    # Retention is fixed when the key is first used: 0 means "expired at once".
    settings.WFSTATE = {**settings.WFSTATE, "IDEMPOTENCY_RETENTION": 0}
    first = runs.start_run("api_quick", detach=True, idempotency_key="r")
    second = runs.start_run("api_quick", detach=True, idempotency_key="r")
    assert second.workflow_id != first.workflow_id
    assert IdempotencyKey.objects.get(key="r").workflow_id == second.workflow_id


@pytest.mark.django_db
def test_a_key_whose_run_was_deleted_starts_a_new_run() -> None:
    first = runs.start_run("api_quick", detach=True, idempotency_key="del")
    runs.delete_run(first.workflow_id)
    second = runs.start_run("api_quick", detach=True, idempotency_key="del")
    assert second.workflow_id != first.workflow_id  # never the deleted run made again
    assert not get_store().exists(first.workflow_id)


@pytest.mark.django_db
def test_conflict_is_reported_by_the_service(admin_client: Client) -> None:
    runs.start_run("api_quick", {"who": "a"}, detach=True, idempotency_key="svc")
    with pytest.raises(IdempotencyConflict) as info:
        runs.start_run("api_quick", {"who": "b"}, detach=True, idempotency_key="svc")
    assert info.value.code == "idempotency_conflict"


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_posts_with_one_key_make_one_run() -> None:
    """Acceptance 2: 20 POSTs from 4 threads, each with its own connection."""
    admin = get_user_model().objects.create_superuser("racer", "r@example.com", "pw")
    barrier = threading.Barrier(4)
    responses: list[Any] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def worker() -> None:
        client = Client()
        client.force_login(admin)
        try:
            barrier.wait(30)
            for _ in range(5):
                response = post(
                    client, {"workflow_name": "api_quick", "inputs": {"who": "x"}}, "race"
                )
                with guard:
                    responses.append(response)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(responses) == 20
    codes = sorted(r.status_code for r in responses)
    assert codes.count(202) == 1, [r.content for r in responses if r.status_code not in (200, 202)]
    assert codes.count(200) == 19
    ids = {r.json()["workflow_id"] for r in responses}
    assert len(ids) == 1
    assert get_store().list() == list(ids)
    assert IdempotencyKey.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_processes_racing_with_one_key_name_one_run(tmp_path: Path) -> None:
    """Two 'hosts': two run_workflow processes started together with one key."""
    storage = tmp_path / "storage"
    args = ("run_workflow", "api_quick", "--detach", "--json", "--idempotency-key", "proc")
    procs = [spawn(storage, *args) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    ids = {json.loads(out)["workflow_id"] for out, _err in outs}
    assert len(ids) == 1
    assert [p.name for p in (storage / "states").glob("*.json")] == [f"{ids.pop()}.json"]


@pytest.mark.django_db(transaction=True)
def test_a_crash_between_reservation_and_creation_leaves_a_usable_key(tmp_path: Path) -> None:
    """SIGKILL right after the key's row is committed, before the run's file exists:
    the row names a run that does not exist; a retry creates exactly that run."""
    storage = tmp_path / "storage"
    args = ("run_workflow", "api_quick", "--detach", "--json", "--idempotency-key", "crash")
    killed = manage(storage, *args, **{CRASH_AFTER_RESERVE_ENV: "1"})
    assert killed.returncode == -signal.SIGKILL, killed
    row = IdempotencyKey.objects.get(key="crash")
    assert not list((storage / "states").glob("*.json"))  # reserved, never created

    retry = manage(storage, *args)
    assert retry.returncode == 0, retry
    assert json.loads(retry.stdout)["workflow_id"] == row.workflow_id
    assert (storage / "states" / f"{row.workflow_id}.json").exists()
    # And a third call only names it.
    again = manage(storage, *args)
    assert json.loads(again.stdout)["workflow_id"] == row.workflow_id
    assert len(list((storage / "states").glob("*.json"))) == 1


# transaction=True: the run executes here, and its index listener writes the row on a
# connection of its own, outside a test transaction that would otherwise be rolled back.
@pytest.mark.django_db(transaction=True)
def test_run_workflow_in_process_with_a_key_runs_once() -> None:
    code, out, err = call("run_workflow", "api_quick", "--json", "--idempotency-key", "cli")
    assert code == 0, err
    first = json.loads(out)
    assert first["status"] == "completed"
    code, out, err = call("run_workflow", "api_quick", "--json", "--idempotency-key", "cli")
    assert code == 0, err
    assert json.loads(out)["workflow_id"] == first["workflow_id"]
    state = runs.load_run(first["workflow_id"])
    assert state.revision == runs.load_run(first["workflow_id"]).revision
    assert state.started_by is not None
    assert state.started_by["kind"] == "command"
    assert state.started_by["idempotency_key"] == "cli"
    assert len(get_store().list()) == 1
