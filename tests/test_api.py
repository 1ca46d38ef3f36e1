"""The REST API (SPEC §9): wfstate/api/.

Runs are started, followed, resumed and cancelled over HTTP; a real ``db_worker``
process executes them in the tests marked so. Every response a test sees is checked
against the OpenAPI schema the API serves (tests/api_support.py).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client, override_settings

from tests.helpers import API, assert_conforms, openapi_schema, wait_for
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, WorkflowState
from wfstate.stores import get_store

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("wfstate_settings")


class API_:
    """A JSON client that checks every response against the served OpenAPI schema."""

    def __init__(self, client: Client, schema: dict[str, Any]) -> None:
        self.client = client
        self.schema = schema

    def call(self, method: str, path: str, body: Any = None, **extra: Any) -> Any:
        url = path.removeprefix("http://testserver")
        url = url if url.startswith("/") else API + url
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

    def delete(self, path: str, **extra: Any) -> Any:
        return self.call("DELETE", path, **extra)


@pytest.fixture
def schema(admin_client: Client) -> dict[str, Any]:
    return openapi_schema(admin_client)


@pytest.fixture
def api(admin_client: Client, schema: dict[str, Any]) -> API_:
    return API_(admin_client, schema)


def saved_run(
    name: str = "api_quick",
    status: RunStatus = RunStatus.PENDING,
    *,
    inputs: dict[str, Any] | None = None,
    started_at: str | None = None,
) -> WorkflowState:
    """A run written straight to the store and indexed, as the engine would leave it."""
    from wfstate import index

    state = WorkflowState.new(name, inputs=inputs or {"who": "x", "times": 1})
    state.status = status
    if started_at:
        state.started_at = state.updated_at = started_at
    if status.is_final:
        state.completed_at = state.updated_at
    get_store().save(state)
    index.index_state(state)
    return state


# --- the list, from the index ------------------------------------------------------------


@pytest.mark.django_db
def test_list_paginates_filters_orders_and_searches(api: API_) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for i in range(7):
        state = saved_run(
            "api_quick" if i % 2 else "api_slow",
            RunStatus.COMPLETED if i < 4 else RunStatus.FAILED,
            started_at=(base + timedelta(hours=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
        ids.append(state.workflow_id)

    page = api.get("runs/?page_size=3").json()
    assert page["count"] == 7
    assert [r["workflow_id"] for r in page["results"]] == ids[::-1][:3]  # newest first
    assert page["results"][0]["url"].endswith(f"{API}runs/{ids[-1]}/")
    second = api.get(page["next"]).json()
    assert [r["workflow_id"] for r in second["results"]] == ids[::-1][3:6]

    def found(query: str) -> list[str]:
        return [r["workflow_id"] for r in api.get(f"runs/?page_size=100&{query}").json()["results"]]

    assert set(found("status=failed")) == set(ids[4:])
    assert set(found("status=failed&status=completed")) == set(ids)
    assert set(found("workflow_name=api_quick")) == set(ids[1::2])
    assert set(found("started_after=2026-01-01T03:00:00Z")) == set(ids[3:])
    assert set(found("started_before=2026-01-01T03:00:00Z")) == set(ids[:3])
    assert found("ordering=started_at") == ids
    assert found(f"search={ids[2][:13]}") == [ids[2]]
    assert set(found("search=api_q")) == set(ids[1::2])


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=exploded", "status"),
        ("started_after=yesterday", "started_after"),
        ("started_before=2026-13-45", "started_before"),
    ],
)
def test_list_bad_filters_are_400_with_field_errors(api: API_, query: str, field: str) -> None:
    response = api.get(f"runs/?{query}")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert field in body["errors"]


@pytest.mark.django_db
def test_list_page_past_the_end_is_404(api: API_) -> None:
    response = api.get("runs/?page=99")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# --- a run's detail, from its file ---------------------------------------------------------


@pytest.mark.django_db
def test_detail_reads_the_file_with_an_etag(api: API_) -> None:
    state = saved_run()
    WorkflowRun.objects.all().delete()  # the file is the truth: no row needed
    response = api.get(f"runs/{state.workflow_id}/")
    assert response.status_code == 200
    body = response.json()
    assert body["workflow_id"] == state.workflow_id
    assert body["inputs"] == {"who": "x", "times": 1}
    assert body["revision"] == get_store().load(state.workflow_id).revision
    assert response["ETag"] == f'"{body["revision"]}"'

    unchanged = api.get(f"runs/{state.workflow_id}/", HTTP_IF_NONE_MATCH=response["ETag"])
    assert unchanged.status_code == 304
    assert unchanged["ETag"] == response["ETag"]
    assert not unchanged.content
    weak = api.get(f"runs/{state.workflow_id}/", HTTP_IF_NONE_MATCH=f'"x", W/{response["ETag"]}')
    assert weak.status_code == 304

    get_store().update(state.workflow_id, lambda s: setattr(s, "current_state", "greet"))
    changed = api.get(f"runs/{state.workflow_id}/", HTTP_IF_NONE_MATCH=response["ETag"])
    assert changed.status_code == 200
    assert changed["ETag"] != response["ETag"]
    assert changed.json()["current_state"] == "greet"


@pytest.mark.django_db
@pytest.mark.parametrize(
    "run_id",
    [
        "nope",
        "..",
        "%2e%2e",
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
        "3F6C1E0A-9B1D-4C1E-8F5E-2D7A0C9B4E11",  # not the canonical lower case
        "3f6c1e0a-9b1d-1c1e-8f5e-2d7a0c9b4e11",  # a UUID1
        "3f6c1e0a9b1d4c1e8f5e2d7a0c9b4e11",
        "%00",
        "a" * 5000,
    ],
)
def test_malformed_and_traversal_ids_are_404(admin_client: Client, run_id: str) -> None:
    for method, suffix in [("get", ""), ("delete", ""), ("post", "resume/"), ("post", "cancel/")]:
        response = getattr(admin_client, method)(
            f"{API}runs/{run_id}/{suffix}", content_type="application/json"
        )
        assert response.status_code == 404, (method, suffix, response.content)


@pytest.mark.django_db
def test_unknown_run_is_404_with_a_code(api: API_) -> None:
    response = api.get(f"runs/{uuid.uuid4()}/")
    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


@pytest.mark.django_db
def test_corrupt_state_is_409_not_500(api: API_) -> None:
    state = saved_run()
    path = get_store().path_for(state.workflow_id)  # whatever the store's layout
    assert path is not None
    path.write_bytes(b'{"workflow_id": ')
    response = api.get(f"runs/{state.workflow_id}/")
    assert response.status_code == 409
    assert response.json()["code"] == "corrupt_state"


# --- starting runs -------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_validates_writes_and_enqueues(api: API_) -> None:
    from django_tasks_db.models import DBTaskResult

    response = api.post("runs/", {"workflow_name": "api_quick", "inputs": {"who": "ada"}})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert body["inputs"] == {"who": "ada", "times": 1}
    assert response["Location"] == body["url"]
    assert body["url"].endswith(f"{API}runs/{body['workflow_id']}/")
    # the file, the index row and the queued task all exist
    assert get_store().load(body["workflow_id"]).status == RunStatus.PENDING
    assert WorkflowRun.objects.get(workflow_id=body["workflow_id"]).status == "pending"
    task = DBTaskResult.objects.get()
    assert task.args_kwargs["args"] == [body["workflow_id"]]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "errors"),
    [
        ({"workflow_name": "api_quick", "inputs": {"times": "many"}}, {"inputs": ["times"]}),
        ({"workflow_name": "api_quick", "inputs": {"times": 99}}, {"inputs": ["times"]}),
        ({"workflow_name": "api_quick", "inputs": {"who": ["a", "b"]}}, {"inputs": ["who"]}),
        ({"workflow_name": "api_quick", "inputs": {"who": {"a": 1}}}, {"inputs": ["who"]}),
        ({"workflow_name": "api_quick", "inputs": {"nope": 1}}, {"inputs": ["nope"]}),
        ({"workflow_name": "api_flaky", "inputs": {}}, {"inputs": ["marker"]}),
        ({"workflow_name": "api_quick", "inputs": ["who"]}, {"inputs": None}),
        ({"workflow_name": "api_quick", "inputs": "who=x"}, {"inputs": None}),
        ({"workflow_name": {"x": 1}}, {"workflow_name": None}),
        ({"workflow_name": None}, {"workflow_name": None}),
        ({"workflow_name": "x" * 200}, {"workflow_name": None}),
        ({}, {"workflow_name": None}),
        ([], {"non_field_errors": None}),
        ('"api_quick"', {"non_field_errors": None}),
        (7, {"non_field_errors": None}),
    ],
)
def test_create_with_wrong_types_is_400_with_field_errors(
    api: API_, body: Any, errors: dict[str, list[str] | None]
) -> None:
    response = api.post("runs/", body)
    assert response.status_code == 400, response.content
    reply = response.json()
    assert reply["code"] in ("invalid", "invalid_inputs")
    for field, subfields in errors.items():
        assert field in reply["errors"]
        for sub in subfields or []:
            assert sub in reply["errors"][field], reply
    assert not WorkflowRun.objects.exists(), list(
        WorkflowRun.objects.values("workflow_name", "status", "started_at")
    )
    assert get_store().list() == []


@pytest.mark.django_db
def test_create_unknown_workflow_is_404(api: API_) -> None:
    response = api.post("runs/", {"workflow_name": "no_such_workflow"})
    assert response.status_code == 404
    assert response.json()["code"] == "workflow_not_found"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "request_too_deep"),
        (
            b'{"workflow_name": "api_quick", "inputs": {"who": ' + b"[" * 100 + b"]" * 100 + b"}}",
            "request_too_deep",
        ),
        (
            b'{"workflow_name": "api_quick", "inputs": {"who": "' + b"x" * 10_000_000 + b'"}}',
            "request_too_large",
        ),
        (b'{"workflow_name": ', "parse_error"),
        (b'{"workflow_name": NaN}', "parse_error"),
        (b'{"workflow_name": "\xff\xfe"}', "parse_error"),
    ],
    ids=["100000-deep", "100-deep-inputs", "10MB", "truncated", "NaN", "bad-utf8"],
)
def test_hostile_bodies_are_400_never_500(api: API_, payload: bytes, code: str) -> None:
    for path in ("runs/", f"runs/{uuid.uuid4()}/resume/"):
        response = api.client.post(API + path, data=payload, content_type="application/json")
        assert response.status_code == 400, response.content[:300]
        assert response.json()["code"] == code
        assert_conforms(api.schema, "POST", API + path, response)


@pytest.mark.django_db
def test_a_body_that_is_not_json_is_415(api: API_) -> None:
    response = api.client.post(
        API + "runs/", data="workflow_name=api_quick", content_type="text/plain"
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    assert_conforms(api.schema, "POST", API + "runs/", response)


# --- resume, cancel, delete without a worker -------------------------------------------------


@pytest.mark.django_db
def test_cancel_a_run_nobody_executes_then_409(api: API_) -> None:
    state = saved_run()
    response = api.post(f"runs/{state.workflow_id}/cancel/")
    assert response.status_code == 202
    assert response.json()["outcome"] == "cancelled"
    assert response.json()["run"]["status"] == "cancelled"
    assert get_store().load(state.workflow_id).status == RunStatus.CANCELLED
    assert WorkflowRun.objects.get(workflow_id=state.workflow_id).status == "cancelled"

    again = api.post(f"runs/{state.workflow_id}/cancel/")
    assert again.status_code == 409
    assert again.json()["code"] == "run_finished"


@pytest.mark.django_db
def test_resume_refusals_are_409(api: API_) -> None:
    done = saved_run(status=RunStatus.COMPLETED)
    response = api.post(f"runs/{done.workflow_id}/resume/")
    assert response.status_code == 409
    assert response.json()["code"] == "not_resumable"

    failed = saved_run(status=RunStatus.FAILED)
    with get_store().run_lock(failed.workflow_id):
        locked = api.post(f"runs/{failed.workflow_id}/resume/")
    assert locked.status_code == 409
    body = locked.json()
    assert body["code"] == "run_locked"
    assert body["owner"]["pid"] == os.getpid()


@pytest.mark.django_db
def test_resume_body_errors_are_400(api: API_) -> None:
    failed = saved_run(status=RunStatus.FAILED)
    for body, field in [
        ({"from": ["x"]}, "from"),
        ({"inputs": [1]}, "inputs"),
        ({"allow_changed_definition": "perhaps"}, "allow_changed_definition"),
    ]:
        response = api.post(f"runs/{failed.workflow_id}/resume/", body)
        assert response.status_code == 400
        assert field in response.json()["errors"]
    bad_input = api.post(f"runs/{failed.workflow_id}/resume/", {"inputs": {"times": "x"}})
    assert bad_input.status_code == 400
    assert "times" in bad_input.json()["errors"]["inputs"]


@pytest.mark.django_db
def test_delete_removes_file_and_row_but_not_while_running(api: API_) -> None:
    state = saved_run(status=RunStatus.FAILED)
    with get_store().run_lock(state.workflow_id):
        busy = api.delete(f"runs/{state.workflow_id}/")
    assert busy.status_code == 409
    assert busy.json()["code"] == "still_running"
    assert get_store().exists(state.workflow_id)

    response = api.delete(f"runs/{state.workflow_id}/")
    assert response.status_code == 204
    assert not get_store().exists(state.workflow_id)
    assert not WorkflowRun.objects.filter(workflow_id=state.workflow_id).exists()
    assert api.get(f"runs/{state.workflow_id}/").status_code == 404
    assert api.delete(f"runs/{state.workflow_id}/").status_code == 404


# --- workflow definitions -----------------------------------------------------------------


@pytest.mark.django_db
def test_workflows_with_input_schema_and_graph(api: API_) -> None:
    listed = api.get("workflows/").json()
    names = [w["name"] for w in listed]
    assert {"demo", "api_quick", "api_flaky"} <= set(names)

    detail = api.get("workflows/api_quick/").json()
    assert detail["url"].endswith(f"{API}workflows/api_quick/")
    schema = detail["input_schema"]
    assert schema["properties"]["times"]["type"] == "integer"
    assert detail["graph"]["initial"] == "greet"
    edge = {"source": "greet", "target": "done", "kind": "success", "label": ""}
    assert edge in detail["graph"]["edges"]
    assert [i["name"] for i in detail["inputs"]] == ["who", "times"]

    missing = api.get("workflows/no_such/")
    assert missing.status_code == 404
    assert missing.json()["code"] == "workflow_not_found"


# --- who may call it ------------------------------------------------------------------------


def every_operation() -> list[tuple[str, str]]:
    some_id = str(uuid.uuid4())
    return [
        ("get", "runs/"),
        ("post", "runs/"),
        ("get", f"runs/{some_id}/"),
        ("delete", f"runs/{some_id}/"),
        ("post", f"runs/{some_id}/resume/"),
        ("post", f"runs/{some_id}/cancel/"),
        ("get", "workflows/"),
        ("get", "workflows/demo/"),
        ("get", "schema/"),
    ]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "host_defaults",
    [
        {},
        {"DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]},
        {
            "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
            "DEFAULT_AUTHENTICATION_CLASSES": [
                "rest_framework.authentication.BasicAuthentication",
                "rest_framework.authentication.SessionAuthentication",
            ],
        },
    ],
    ids=["defaults", "allowany", "allowany-basic-first"],
)
def test_anonymous_and_non_admin_are_refused_everywhere(
    client: Client, django_user_model: Any, host_defaults: dict[str, Any], schema: dict[str, Any]
) -> None:
    state = saved_run()
    user = django_user_model.objects.create_user("mallory", password="pw")
    with override_settings(REST_FRAMEWORK={**settings.REST_FRAMEWORK, **host_defaults}):
        for who in ("anonymous", "non-admin"):
            if who == "non-admin":
                client.force_login(user)
            for method, path in every_operation():
                response = getattr(client, method)(API + path, content_type="application/json")
                expected = {401, 403} if who == "anonymous" else {403}
                assert response.status_code in expected, (who, method, path, response.status_code)
                if path != "schema/":
                    assert response.json()["code"] in ("not_authenticated", "permission_denied")
                    assert_conforms(schema, method, API + path, response)
            client.logout()
    assert get_store().load(state.workflow_id).status == RunStatus.PENDING
    assert get_store().list() == [state.workflow_id]


@pytest.mark.django_db
def test_wrong_credentials_are_refused_with_the_hosts_challenge(client: Client) -> None:
    wrong = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(b"no:body").decode()}
    # Session authentication first (DRF's default): no challenge to send, so 403.
    response = client.get(API + "runs/", **wrong)
    assert response.status_code == 403
    assert response.json()["code"] == "authentication_failed"
    basic_first = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.BasicAuthentication"],
    }
    with override_settings(REST_FRAMEWORK=basic_first):
        response = client.get(API + "runs/", **wrong)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert response.json()["code"] == "authentication_failed"


@pytest.mark.django_db
def test_permission_classes_come_from_wfstate_settings(client: Client, settings: Any) -> None:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    }
    assert client.get(API + "workflows/").status_code == 200
    settings.WFSTATE = {
        **settings.WFSTATE,
        "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    }
    assert client.get(API + "workflows/").status_code == 403


@pytest.mark.django_db
def test_session_post_without_csrf_token_is_refused(admin_user: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    body = {"workflow_name": "api_quick"}
    refused = client.post(API + "runs/", data=body, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]
    assert refused.json()["code"] == "permission_denied"
    assert get_store().list() == []

    token = "t" * 32  # what a page rendered with {% csrf_token %} would have set
    client.cookies["csrftoken"] = token
    accepted = client.post(
        API + "runs/", data=body, content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert accepted.status_code == 202


@pytest.mark.django_db
def test_error_format_holds_whatever_the_host_handler(api: API_) -> None:
    with override_settings(
        REST_FRAMEWORK={**settings.REST_FRAMEWORK, "EXCEPTION_HANDLER": "tests.test_api.no_handler"}
    ):
        response = api.get(f"runs/{uuid.uuid4()}/")
    assert response.status_code == 404
    assert response.json()["code"] == "run_not_found"


def no_handler(exc: Exception, context: Any) -> None:
    return None


# --- a real worker ------------------------------------------------------------------------------


@pytest.fixture
def worker(
    transactional_db: None, wfstate_settings: dict[str, Any]
) -> Iterator[subprocess.Popen[bytes]]:
    """``manage.py db_worker`` in its own process, on this test's database and storage."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "tests.settings"),
        "WFSTATE_STORAGE_DIR": str(wfstate_settings["STORAGE_DIR"]),
        # On PostgreSQL the test database has its own name: hand it to the worker.
        "WFSTATE_TEST_PG_NAME": str(connection.settings_dict["NAME"]),
    }
    if connection.vendor == "sqlite":
        assert connection.settings_dict["NAME"] == settings.DATABASES["default"]["TEST"]["NAME"]
    proc = subprocess.Popen(
        [sys.executable, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if os.environ.get("WFSTATE_SHOW_WORKER"):
            sys.stderr.write(out.decode(errors="replace"))


def wait_for_status(
    api: API_, workflow_id: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    seen: list[str] = []

    def check() -> dict[str, Any] | None:
        body = api.get(f"runs/{workflow_id}/").json()
        if not seen or seen[-1] != body["status"]:
            seen.append(body["status"])
        return body if body["status"] in statuses else None

    try:
        return wait_for(check, timeout, f"run {workflow_id} to reach {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; statuses seen: {seen}") from None


@pytest.mark.django_db(transaction=True)
def test_start_follow_resume_and_cancel_runs_with_a_real_worker(
    admin_user: Any, worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    client = Client()
    client.force_login(admin_user)
    api = API_(client, openapi_schema(client))

    # 1. start: pending at once, then completed by the worker
    started = api.post("runs/", {"workflow_name": "api_quick", "inputs": {"who": "worker"}})
    assert started.status_code == 202
    run_id = started.json()["workflow_id"]
    assert started.json()["status"] == "pending"
    done = wait_for_status(api, run_id, {"completed", "failed", "cancelled"})
    assert done["status"] == "completed", done
    assert done["states"]["greet"]["output"] == "hello worker\n"
    row = api.get(f"runs/?search={run_id}").json()["results"]
    assert [r["status"] for r in row] == ["completed"]

    # 2. a failed run, resumed over HTTP once its cause is gone
    marker = tmp_path / "marker"
    flaky = api.post("runs/", {"workflow_name": "api_flaky", "inputs": {"marker": str(marker)}})
    flaky_id = flaky.json()["workflow_id"]
    failed = wait_for_status(api, flaky_id, {"completed", "failed", "cancelled"})
    assert failed["status"] == "failed", failed
    marker.touch()
    resumed = api.post(f"runs/{flaky_id}/resume/", {"from": "check"})
    assert resumed.status_code == 202, resumed.json()
    assert resumed.json()["workflow_id"] == flaky_id
    again = wait_for_status(api, flaky_id, {"completed", "failed", "cancelled"})
    assert again["status"] == "completed", again
    assert again["started_at"] == failed["started_at"]
    assert again["history"], "the rewound step is kept in history"

    # 3. a live run, cancelled over HTTP: the worker's executor stops it
    slow = api.post("runs/", {"workflow_name": "api_slow"})
    slow_id = slow.json()["workflow_id"]
    wait_for(
        lambda: (
            api.get(f"runs/{slow_id}/").json()["current_state"] == "wait"
            and get_store().run_lock_owner(slow_id) is not None
        ),
        30,
        "the slow step to run",
    )
    locked = api.post(f"runs/{slow_id}/resume/")
    assert locked.status_code == 409
    assert locked.json()["code"] == "run_locked"
    busy = api.delete(f"runs/{slow_id}/")
    assert busy.status_code == 409
    assert busy.json()["code"] == "still_running"

    cancelled_at = time.monotonic()
    cancel = api.post(f"runs/{slow_id}/cancel/")
    assert cancel.status_code == 202
    assert cancel.json()["outcome"] == "requested"
    final = wait_for_status(api, slow_id, {"completed", "failed", "cancelled"}, timeout=10)
    assert final["status"] == "cancelled"
    assert final["states"]["wait"]["status"] == "cancelled"
    assert time.monotonic() - cancelled_at < 5
    assert api.post(f"runs/{slow_id}/cancel/").status_code == 409

    # the index followed every run
    listed = {r["workflow_id"]: r["status"] for r in api.get("runs/").json()["results"]}
    assert listed == {run_id: "completed", flaky_id: "completed", slow_id: "cancelled"}
    assert worker.poll() is None, "the worker is still alive"
