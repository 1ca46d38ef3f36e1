"""One invalid workflow file makes only that workflow unusable (issue 9).

The host project keeps starting (``check``, ``migrate``: a warning, exit 0), every other
workflow runs, the invalid one exits 2, and every face (``list_workflows``,
``validate_workflow``, the API, the admin) shows it as invalid with its errors. The
first test runs real ``manage.py`` processes on a site of their own (database and
storage in ``tmp_path``), as an operator would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from django.test import Client
from django.urls import reverse

from tests.helpers import API, REPO, assert_conforms, call, openapi_schema

# A bad target: the YAML parses, the definition does not validate (line 4).
BROKEN = (
    "name: broken_wf\nstates:\n  initial: a\n  a: {type: step, command: x, on_success: nowhere}\n"
)
# Not even YAML: its name can only be the file's stem.
UNPARSABLE = "name: [unclosed\nstates: {\n"


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "broken-workflows"
    directory.mkdir()
    (directory / "broken.yaml").write_text(BROKEN)
    (directory / "unparsable.yaml").write_text(UNPARSABLE)
    # A name no URL could carry: listed under the stem, never a NoReverseMatch.
    (directory / "slashed.yaml").write_text("name: team/deploy\nstates: {initial: a}\n")
    return directory


@pytest.fixture
def with_broken(settings: Any, wfstate_settings: Any, broken_dir: Path) -> Path:
    settings.WFSTATE = {
        **settings.WFSTATE,
        "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], broken_dir],
        "INDEX_ON_WRITE": False,
    }
    return broken_dir


def site(tmp_path: Path, broken_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``manage.py ARGS`` of the test settings plus ``broken_dir``, on a SQLite database
    and a storage directory of its own (never the test run's)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("WFSTATE_STORAGE_DIR", "WFSTATE_TEST_DB", "DJANGO_SETTINGS_MODULE")
    }
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        WFSTATE_TEST_TMP=str(tmp_path / "site"),
        WFSTATE_TEST_WORKFLOW_DIR=str(broken_dir),
        PYTHONUNBUFFERED="1",
    )
    (tmp_path / "site").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_host_project_keeps_working_beside_a_broken_workflow(
    tmp_path: Path, broken_dir: Path
) -> None:
    check = site(tmp_path, broken_dir, "check")
    assert check.returncode == 0, check.stderr
    shown = check.stdout + check.stderr
    assert "wfstate.W004" in shown
    assert f"{broken_dir / 'broken.yaml'}:4" in shown and "nowhere" in shown
    assert "unparsable.yaml" in shown

    migrate = site(tmp_path, broken_dir, "migrate", "--no-input")
    assert migrate.returncode == 0, migrate.stderr
    assert "wfstate.W004" in migrate.stderr  # shown, not fatal

    other = site(tmp_path, broken_dir, "run_workflow", "api_quick", "--json")
    assert other.returncode == 0, other.stderr
    assert orjson.loads(other.stdout)["status"] == "completed"

    broken = site(tmp_path, broken_dir, "run_workflow", "broken_wf", "--json")
    assert broken.returncode == 2, broken.stderr
    error = orjson.loads(broken.stdout)["error"]
    assert error["code"] == "invalid_definition"
    assert any("nowhere" in e["message"] and e["line"] == 4 for e in error["errors"])

    # The file whose YAML does not parse is known by its stem.
    assert site(tmp_path, broken_dir, "run_workflow", "unparsable").returncode == 2
    validate = site(tmp_path, broken_dir, "validate_workflow", "unparsable", "--json")
    assert validate.returncode == 2
    assert orjson.loads(validate.stdout)["valid"] is False

    listed = site(tmp_path, broken_dir, "list_workflows", "--json")
    assert listed.returncode == 0, listed.stderr
    by_name = {w["name"]: w for w in orjson.loads(listed.stdout)["workflows"]}
    assert by_name["api_quick"]["valid"] is True and by_name["api_quick"]["errors"] == []
    assert by_name["broken_wf"]["valid"] is False
    assert by_name["broken_wf"]["path"] == str(broken_dir / "broken.yaml")
    assert by_name["unparsable"]["valid"] is False and by_name["unparsable"]["errors"]


# --- the commands, in process --------------------------------------------------------------


@pytest.mark.usefixtures("with_broken")
def test_list_workflows_shows_invalid_ones_with_their_errors() -> None:
    code, out, _ = call("list_workflows", "--json")
    assert code == 0
    doc = orjson.loads(out)
    broken = next(w for w in doc["workflows"] if w["name"] == "broken_wf")
    assert broken["valid"] is False
    assert any("nowhere" in e["message"] for e in broken["errors"])
    assert {i["name"] for i in doc["invalid"]} == {"broken_wf", "slashed", "unparsable"}
    demo = next(w for w in doc["workflows"] if w["name"] == "demo")
    assert demo["valid"] is True and demo["sha256"]

    code, out, _ = call("list_workflows")
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("broken_wf") and "INVALID" in line for line in lines)
    assert any("nowhere" in line for line in lines)
    assert any(line.startswith("demo ") for line in lines)


@pytest.mark.usefixtures("with_broken")
def test_validate_workflow_by_name_of_an_invalid_one_exits_2(with_broken: Path) -> None:
    code, out, message = call("validate_workflow", "broken_wf", "--json")
    assert code == 2
    doc = orjson.loads(out)
    assert doc["valid"] is False and doc["name"] == "broken_wf"
    assert doc["path"] == str(with_broken / "broken.yaml")
    assert doc["error"]["code"] == "invalid_definition"
    assert f"{with_broken / 'broken.yaml'}:4" in message
    assert call("validate_workflow", "api_quick")[0] == 0


# --- the API -------------------------------------------------------------------------------


class _API:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.schema = openapi_schema(client)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        url = API + path
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs.update(data=body, content_type="application/json")
        response = getattr(self.client, method.lower())(url, **kwargs)
        assert response.status_code < 500, response.content
        assert_conforms(self.schema, method, url, response)
        return response


@pytest.mark.django_db
@pytest.mark.usefixtures("with_broken")
def test_the_api_lists_invalid_workflows_and_refuses_to_run_them(admin_client: Client) -> None:
    api = _API(admin_client)
    listed = api.call("GET", "workflows/")
    assert listed.status_code == 200
    by_name = {w["name"]: w for w in listed.json()}
    broken = by_name["broken_wf"]
    assert broken["valid"] is False
    assert broken["graph"] is None and broken["input_schema"] is None
    assert any(e["line"] == 4 and "nowhere" in e["message"] for e in broken["errors"])
    assert by_name["unparsable"]["valid"] is False
    assert by_name["slashed"]["valid"] is False
    assert by_name["slashed"]["url"].endswith(f"{API}workflows/slashed/")
    assert by_name["api_quick"]["valid"] is True and by_name["api_quick"]["errors"] == []
    assert by_name["api_quick"]["graph"]["initial"] == "greet"

    detail = api.call("GET", "workflows/broken_wf/")
    assert detail.status_code == 200
    assert detail.json()["valid"] is False
    assert detail.json()["errors"] == broken["errors"]

    started = api.call("POST", "runs/", {"workflow_name": "broken_wf", "inputs": {}})
    assert started.status_code == 409
    body = started.json()
    assert body["code"] == "invalid_definition"
    assert any("nowhere" in line for line in body["errors"]["definition"])

    assert api.call("GET", "workflows/api_quick/").json()["valid"] is True


# --- the admin -----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.usefixtures("with_broken")
def test_the_admin_shows_invalid_workflows_with_their_errors(admin_client: Client) -> None:
    response = admin_client.get(reverse("admin:wfstate_workflowrun_changelist"))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="wf-invalid-workflows"' in html
    assert "broken_wf" in html and "nowhere" in html and "unparsable" in html


@pytest.mark.django_db
@pytest.mark.usefixtures("wfstate_settings")
def test_the_admin_shows_no_invalid_box_when_all_are_valid(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:wfstate_workflowrun_changelist")).content.decode()
    assert 'id="wf-invalid-workflows"' not in html
