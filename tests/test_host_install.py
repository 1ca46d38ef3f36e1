"""Installing wfstate into a fresh host project (SPEC §1): the wheel, and nothing else.

Builds the wheel, checks it holds the app only, installs it into a brand-new virtual
environment (dependencies from the package index, or pip's cache), writes a minimal
host project with its own settings, urls and workflows folder, migrates, and runs a
workflow through the host's API URLs (a real ``runserver``) and its commands.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import venv
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

HOST_SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "host-test-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "wfstate",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "hostproj.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The host's own API is open to anyone: wfstate's must stay admin-only regardless.
REST_FRAMEWORK = {"DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]}
# No TASKS setting: Django Tasks' default immediate backend runs API-started runs.
# No WFSTATE setting: storage in BASE_DIR/storage, workflows in BASE_DIR/workflows.
"""

HOST_URLS = """
from django.urls import include, path

urlpatterns = [path("api/wfstate/", include("wfstate.api.urls"))]
"""

HOST_MANAGE = """
import os, sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hostproj.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
"""

HOST_WORKFLOW = """
name: host_hello
version: "1.0"
inputs:
  - {name: who, type: string, default: world}
states:
  initial: greet
  greet:
    type: step
    command: echo "hello {{ inputs.who }}"
    on_success: done
    on_failure: failed
  done: {type: terminal, status: success}
  failed: {type: terminal, status: failure}
"""


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # setuptools copies the sources into build/lib and packs that, keeping there any
    # file since removed from the sources (a moved module would still ship): start clean.
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    # An isolated build, as pip and CI build it: the build backend comes from
    # [build-system] requires, not from whatever this venv happens to hold.
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out)], ROOT)
    (found,) = out.glob("wfstate-*.whl")
    return found


def test_the_wheel_holds_the_app_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"wfstate"}
    for needed in (
        "wfstate/api/urls.py",
        "wfstate/migrations/0001_initial.py",
        "wfstate/schema/workflow.schema.json",
        "wfstate/py.typed",
    ):
        assert needed in names
    assert not [n for n in names if "/tests/" in n or n.startswith(("tests/", "project/"))]


def test_the_wheel_contains_no_demo_only_command(wheel: Path) -> None:
    """``ensure_demo_admin`` creates admin/admin: the demo project's, never a host's."""
    names = zipfile.ZipFile(wheel).namelist()
    commands = {n.rsplit("/", 1)[1] for n in names if "/management/commands/" in n}
    assert "run_workflow.py" in commands  # the wheel's commands are where this looks
    assert not [n for n in names if "ensure_demo_admin" in n or "demo" in n.rsplit("/", 1)[1]]
    assert (ROOT / "project" / "management" / "commands" / "ensure_demo_admin.py").is_file()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(url: str, method: str = "GET", body: Any = None, auth: bytes | None = None) -> Any:
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth).decode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, _json(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read()), dict(exc.headers)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data or b"null")
    except ValueError:
        return data  # e.g. the host's own HTML 404 for a URL no pattern matches


def test_a_fresh_host_project_runs_workflows(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = str(env_dir / "bin" / "python")
    run([python, "-m", "pip", "install", "-q", f"{wheel}[db]"], tmp_path, timeout=900)
    # A real fresh environment: the app comes from the wheel, not from this checkout.
    location = run([python, "-c", "import wfstate; print(wfstate.__file__)"], tmp_path)
    assert str(env_dir) in location

    host = tmp_path / "host"
    (host / "hostproj").mkdir(parents=True)
    (host / "workflows").mkdir()
    (host / "manage.py").write_text(textwrap.dedent(HOST_MANAGE))
    (host / "hostproj" / "__init__.py").write_text("")
    (host / "hostproj" / "settings.py").write_text(textwrap.dedent(HOST_SETTINGS))
    (host / "hostproj" / "urls.py").write_text(textwrap.dedent(HOST_URLS))
    (host / "workflows" / "host_hello.yaml").write_text(textwrap.dedent(HOST_WORKFLOW))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "WFSTATE_", "PYTHON"))
    }
    env["DJANGO_SUPERUSER_PASSWORD"] = "pw-host"

    def manage(*args: str) -> str:
        return run([python, "manage.py", *args], host, env)

    manage("check", "--fail-level", "WARNING")
    manage("migrate", "--noinput", "-v", "0")
    manage("createsuperuser", "--noinput", "--username", "boss", "--email", "b@example.com")

    # the commands
    started = json.loads(manage("run_workflow", "host_hello", "--input", "who=cli", "--json"))
    run_id = started["workflow_id"]
    assert started["status"] == "completed", started
    status = json.loads(manage("workflow_status", run_id, "--json"))
    assert status["status"] == "completed"
    assert status["states"]["greet"]["output"] == "hello cli\n"
    assert (host / "storage" / "states" / f"{run_id}.json").is_file()

    # the API, served by the host
    port = free_port()
    log = (tmp_path / "runserver.log").open("wb")
    server = subprocess.Popen(
        [python, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=host,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api/wfstate/"
    boss = b"boss:pw-host"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                request(base + "workflows/")
                break
            except OSError:
                assert time.monotonic() < deadline, "runserver did not start"
                time.sleep(0.1)

        # the host's AllowAny does not open wfstate's API
        for path in ("runs/", "workflows/", f"runs/{run_id}/", "schema/"):
            code, _, _ = request(base + path)
            assert code in (401, 403), path
        code, body, _ = request(base + "runs/", "POST", {"workflow_name": "host_hello"})
        assert code in (401, 403)

        code, body, headers = request(
            base + "runs/", "POST", {"workflow_name": "host_hello", "inputs": {"who": "api"}}, boss
        )
        assert code == 202, body
        assert headers["Location"] == body["url"]
        assert body["url"].startswith(base + "runs/")
        code, detail, headers = request(body["url"], auth=boss)
        assert code == 200
        assert detail["status"] == "completed"  # the immediate backend ran it in the request
        assert detail["states"]["greet"]["output"] == "hello api\n"
        assert headers["ETag"] == f'"{detail["revision"]}"'

        code, listed, _ = request(base + "runs/?ordering=started_at", auth=boss)
        assert code == 200
        assert [r["workflow_id"] for r in listed["results"]] == [run_id, detail["workflow_id"]]
        code, workflows, _ = request(base + "workflows/", auth=boss)
        assert [w["name"] for w in workflows] == ["host_hello"]
        code, schema, _ = request(base + "schema/?format=json", auth=boss)
        assert code == 200
        assert "/api/wfstate/runs/{workflow_id}/resume/" in schema["paths"]
        for traversal in ("runs/../../etc/passwd/", "runs/..%2F..%2Fetc%2Fpasswd/", "runs/%2e%2e/"):
            code, body, _ = request(base + traversal, auth=boss)
            assert code == 404, traversal
    except BaseException:
        sys.stderr.write((tmp_path / "runserver.log").read_text(errors="replace")[-6000:])
        raise
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
