"""Schemathesis fuzzes every operation of the API's own OpenAPI schema (SPEC §9).

Authenticated as an admin (HTTP Basic), through Django's WSGI application, with a few
real runs in the store so that detail, resume, cancel and delete meet existing runs as
well as random ids. Every response must be documented (status, content type, headers,
body schema) and no response may be a 5xx.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth

from tests.helpers import API
from wfstate.state import RunStatus, WorkflowState
from wfstate.stores import get_store

ADMIN = {"Authorization": "Basic " + base64.b64encode(b"admin:password").decode()}

# Every operation the schema documents (test_the_schema_documents_every_operation checks
# that this list is the schema's, so none escapes the fuzzing).
OPERATIONS = [
    ("GET", f"{API}runs/"),
    ("POST", f"{API}runs/"),
    ("GET", f"{API}runs/{{workflow_id}}/"),
    ("DELETE", f"{API}runs/{{workflow_id}}/"),
    ("POST", f"{API}runs/{{workflow_id}}/cancel/"),
    ("POST", f"{API}runs/{{workflow_id}}/resume/"),
    ("GET", f"{API}runs/{{workflow_id}}/loops/{{loop}}/"),
    ("GET", f"{API}runs/{{workflow_id}}/steps/{{state}}/output/"),
    ("POST", f"{API}runs/{{workflow_id}}/signal/"),
    ("GET", f"{API}schema/"),
    ("GET", f"{API}workflows/"),
    ("GET", f"{API}workflows/{{name}}/"),
    ("GET", f"{API}schedules/"),
    ("GET", f"{API}schedules/{{name}}/"),
]


@pytest.fixture
def api_schema(admin_user: Any, wfstate_settings: dict[str, Any]) -> Iterator[Any]:
    from wfstate import index

    for status in (RunStatus.PENDING, RunStatus.FAILED, RunStatus.COMPLETED):
        state = WorkflowState.new("api_quick", inputs={"who": "x", "times": 1})
        state.status = status
        get_store().save(state)
        index.index_state(state)

    # The WSGI app runs in this thread, inside the test's transaction: keep Django from
    # closing that connection at each request's start and end (as its test Client does).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi(
            f"{API}schema/?format=json", get_wsgi_application(), headers=ADMIN
        )
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def test_the_schema_documents_every_operation(api_schema: Any) -> None:
    paths = api_schema.raw_schema["paths"]
    found = {(method.upper(), path) for path, item in paths.items() for method in item}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("mode", list(GenerationMode))
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_fuzzed_requests_get_documented_responses_and_no_5xx(
    api_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(headers=ADMIN, excluded_checks=[ignored_auth])

    fuzz()
