"""The helpers every test module shares (one module: no test module imports another).

Fixtures are in ``conftest.py``; the modules that child processes import (step
callables, spawn targets) are ``*_steps.py`` and ``store_workers.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
from django.db import connection

from tests import scale_steps
from wfstate.state import RunStatus, StepResult, StepStatus, WorkflowState

# --- Processes: commands in child processes, polling, pids ---------------------------------


REPO = Path(__file__).resolve().parent.parent


def child_env(storage: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "WFSTATE_STORAGE_DIR": str(storage),
        "WFSTATE_INDEX_ON_WRITE": "0",
        "PYTHONUNBUFFERED": "1",
    }
    from django.db import connection

    # On PostgreSQL the test database has its own name (test_test): hand it on.
    env["WFSTATE_TEST_PG_NAME"] = str(connection.settings_dict["NAME"])
    env.update(extra)
    return env


def manage(
    storage: Path, *args: str, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=child_env(storage, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def spawn(storage: Path, *args: str, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=child_env(storage, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return False


def call(*args: str) -> tuple[int, str, str]:
    """``call_command`` as a script sees it: (exit code, stdout, message or stderr)."""
    from io import StringIO

    from django.core.management import call_command
    from django.core.management.base import CommandError

    out, err = StringIO(), StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except CommandError as exc:
        return exc.returncode, out.getvalue(), str(exc)
    return 0, out.getvalue(), err.getvalue()


# --- Index rows and states as the engine writes them ---------------------------------------


def make_state(
    name: str = "demo",
    status: RunStatus = RunStatus.RUNNING,
    steps: dict[str, StepStatus] | None = None,
    current: str | None = None,
    **kwargs: Any,
) -> WorkflowState:
    """A state with steps one second apart (times in 2026, as the files write them)."""
    state = WorkflowState.new(name, inputs={"who": "test"}, workflow_version="1.0.0", **kwargs)
    state.status = status
    state.started_at = "2026-11-27T11:00:00.000000Z"
    for i, (step, step_status) in enumerate((steps or {}).items()):
        state.states[step] = StepResult(
            name=step,
            status=step_status,
            output=f"{step} output\n",
            started_at=f"2026-11-27T11:00:{i * 2:02d}.000000Z",
            completed_at=None
            if step_status == StepStatus.RUNNING
            else f"2026-11-27T11:00:{i * 2 + 1:02d}.500000Z",
            duration_ms=None if step_status == StepStatus.RUNNING else 1500,
            exit_code=None if step_status == StepStatus.RUNNING else 0,
            error="boom" if step_status == StepStatus.FAILED else None,
        )
    state.current_state = current or (list(state.states)[-1] if state.states else None)
    if status.is_final:
        state.completed_at = "2026-11-27T11:00:30.000000Z"
    return state


def rows() -> dict[str, dict[str, Any]]:
    """Every index row, by run id, with the columns a sync compares."""
    from wfstate.index import ROW_FIELDS  # the index needs Django's apps: imported late
    from wfstate.models import WorkflowRun

    return {r["workflow_id"]: r for r in WorkflowRun.objects.values("workflow_id", *ROW_FIELDS)}


# --- The API's OpenAPI schema, and responses checked against it ----------------------------


API = "/api/wfstate/"


def openapi_schema(client: Any) -> dict[str, Any]:
    response = client.get(f"{API}schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def _operation(schema: dict[str, Any], path: str, method: str) -> tuple[str, dict[str, Any]]:
    path = path.split("?", 1)[0]
    for template, item in schema["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise AssertionError(f"{method} {path} is not in the schema")


def assert_conforms(schema: dict[str, Any], method: str, path: str, response: Any) -> None:
    """Fail unless ``response`` is one the schema documents for ``method path``."""
    template, operation = _operation(schema, path, method)
    responses = operation["responses"]
    code = str(response.status_code)
    assert code in responses, f"{method} {template}: {code} is undocumented ({sorted(responses)})"
    documented = responses[code]
    content = documented.get("content")
    if not content:
        assert not response.content, f"{method} {template} {code}: unexpected body"
        return
    media = response["Content-Type"].split(";")[0].strip()
    assert media in content, f"{method} {template} {code}: {media} not in {sorted(content)}"
    body_schema = {**content[media]["schema"], "components": schema["components"]}
    jsonschema.validate(
        response.json(),
        body_schema,
        cls=jsonschema.Draft202012Validator,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    for name, header in (documented.get("headers") or {}).items():
        if header.get("required"):
            assert response.has_header(name), f"{method} {template} {code}: no {name} header"


# --- A real tmpfs (full or read-only filesystems) ------------------------------------------


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str, refused: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``mount_point`` for the block.

    Where mounting is not permitted the test is skipped, saying ``refused`` and why.
    """
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"{refused}: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


# --- Redis ---------------------------------------------------------------------------------


REDIS_URL = os.environ.get("WFSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def unique_prefix() -> str:
    """A key and channel prefix of one test (channels are server-wide, not per DB)."""
    return f"wfstate-test-{uuid.uuid4().hex[:12]}"


def delete_prefix(prefix: str, url: str = REDIS_URL) -> None:
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


# --- The state document's key order --------------------------------------------------------


TOP_KEYS = [
    "schema_version",
    "workflow_id",
    "workflow_name",
    "workflow_version",
    "definition_sha256",
    "status",
    "current_state",
    "started_at",
    "updated_at",
    "completed_at",
    "inputs",
    "started_by",
    "states",
    "revision",
    "error",
    "history",
    # sub-workflows, hooks, outputs (issue 11)
    "parent_run_id",
    "outputs",
    "hooks",
    "warnings",
    "exit_code",
    # runs that wait (issue 12)
    "waiting_for",
]


STEP_KEYS = [
    "name",
    "status",
    "output",
    "stderr",
    "exit_code",
    "attempt",
    "error",
    "started_at",
    "completed_at",
    "duration_ms",
    "output_truncated",
    "traceback",
    "process",
    "loop",
    "child_run_id",
    "hooks",
    # a wait step's signal (issue 12)
    "signal",
    "signal_id",
    "payload",
    "sender",
    "received_at",
]


# --- Hostile values for the shell ----------------------------------------------------------


HOSTILE = [
    "$(touch X)",
    "`touch X`",
    "; touch X #",
    "' ; touch X '",
    '" ; touch X "',
    "\ntouch X",
    "a\ntouch X\n",
    "\\",
    "\\'\\\"",
    "$HOME",
    "${HOME}",
    "",
    "*",
    "~",
    "-n",
    "a b\tc",
    "ünïcødé ✓ 日本",
    "&& touch X || touch X | touch X > X < X",
    "'\"'\"'$(touch X)'",
    "}}{{ inputs.v }}",
]


# --- Chromium ------------------------------------------------------------------------------


CHROMIUM = "/usr/bin/chromium"


ARTIFACTS = REPO / "test-artifacts"


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


# --- RQ workers over Redis (scale-out tests) -----------------------------------------------


def tagged_pids(tag: str) -> list[int]:
    """Every live process whose environment carries ``tag`` (ours, and only ours)."""
    found = []
    needle = tag.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    return int(stat.rsplit(") ", 1)[1].split()[1])


class Cluster:
    """A queue, a lock prefix, a storage directory and the workers serving them."""

    def __init__(self, tmp_path: Path) -> None:
        token = uuid.uuid4().hex[:10]
        self.queue = f"wfstate-test-{token}"
        self.prefix = f"wfstate-test-{token}"
        self.tag = f"WFSTATE_TEST_RQ_QUEUE={self.queue}"
        self.storage = tmp_path / "storage"
        self.workflows = tmp_path / "workflows"
        self.log = tmp_path / "steps.log"
        self.output = tmp_path / "workers"
        self.output.mkdir()
        scale_steps.write_workflow(self.workflows)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.redis = redis.Redis.from_url(REDIS_URL, decode_responses=True)

    def settings(self, settings: Any) -> None:
        """Point this (test) process at the same queue, locks and storage."""
        settings.WFSTATE = {
            **settings.WFSTATE,
            "STORAGE_DIR": self.storage,
            "WORKFLOW_DIRS": [*settings.WFSTATE["WORKFLOW_DIRS"], self.workflows],
            "LOCK_BACKEND": "redis",
            "STORE": {
                "BACKEND": "wfstate.stores.JSONFileStore",
                "OPTIONS": {"lock_options": {"redis_url": REDIS_URL, "prefix": self.prefix}},
            },
            "TASK_BACKEND": "default",
            "TASK_QUEUE": self.queue,
            "INDEX_ON_WRITE": True,
        }
        # "default" must stay a valid queue: wfstate's task is declared on it, and the
        # Tasks API validates that when wfstate.tasks is imported. Nothing is put on it.
        settings.TASKS = {
            "default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default", self.queue]}
        }
        settings.RQ_QUEUES = {
            name: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": -1} for name in ("default", self.queue)
        }

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "PYTHONUNBUFFERED": "1",
            "WFSTATE_STORAGE_DIR": str(self.storage),
            "WFSTATE_INDEX_ON_WRITE": "1",
            "WFSTATE_TEST_TASKS": "rq",
            "WFSTATE_TEST_RQ_QUEUE": self.queue,
            "WFSTATE_TEST_REDIS_URL": REDIS_URL,
            "WFSTATE_TEST_LOCK_BACKEND": "redis",
            "WFSTATE_TEST_REDIS_PREFIX": self.prefix,
            "WFSTATE_TEST_WORKFLOW_DIR": str(self.workflows),
        }
        if connection.vendor == "postgresql":
            # The workers use the test database pytest-django made, not its model.
            env["WFSTATE_TEST_PG_NAME"] = str(connection.settings_dict["NAME"])
        return env

    def start_workers(self, count: int) -> None:
        for _ in range(count):
            index = len(self.workers)
            out = open(self.output / f"worker{index}.log", "wb")  # noqa: SIM115
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "manage.py",
                        "rqworker",
                        "--job-class",
                        "django_tasks_rq.Job",
                        "--name",
                        f"{self.queue}-w{index}",
                        self.queue,
                    ],
                    cwd=REPO,
                    env=self.env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
            out.close()
        # Ready when registered in Redis: nothing is enqueued before all can take it.
        wait_for(
            lambda: self.redis.scard(f"rq:workers:{self.queue}") >= len(self.workers),
            90,
            f"{count} RQ workers to register",
        )

    def worker_output(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.output.iterdir())
        )

    def close(self) -> None:
        # Workers, their work horses (own process groups) and any orphaned horse.
        for _ in range(3):
            pids = tagged_pids(self.tag)
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.workers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
            with contextlib.suppress(AssertionError):
                wait_for(lambda pids=pids: not any(map(pid_alive, pids)), 10, "the kills")
        for proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        delete_prefix(self.prefix)
        scale_steps.delete_rq_queue(self.redis, self.queue)
        self.redis.close()
