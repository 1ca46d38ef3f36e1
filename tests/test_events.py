"""Live progress over SSE (issue 14, acceptance 1), against real servers.

``runserver`` (WSGI, a thread per client) and ``uvicorn`` (ASGI, an async stream),
a real HTTP client (httpx), and a real executor process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.helpers import REPO, child_env, spawn, wait_for
from wfstate import runs
from wfstate.stores import get_store

pytestmark = pytest.mark.django_db(transaction=True)

AUTH = ("root", "pw")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["runserver", "uvicorn"])
def server(request: Any, wfstate_settings: dict[str, Any]) -> Iterator[str]:
    User.objects.create_superuser(AUTH[0], password=AUTH[1])
    port = free_port()
    if request.param == "runserver":
        command = [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"]
    else:
        command = [
            sys.executable, "-m", "uvicorn", "project.asgi:application",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ]  # fmt: skip
    storage = Path(wfstate_settings["STORAGE_DIR"])
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        env=child_env(storage, WFSTATE_INDEX_ON_WRITE="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{base}/admin/login/", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=60, what=f"{request.param} to answer")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_events(
    base: str, workflow_id: str, *, last_id: int | None = None, stop_after: int | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs until ``end`` or, with ``stop_after``, that revision."""
    headers = {"Accept": "text/event-stream"}
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    found: list[tuple[str, dict[str, Any]]] = []
    url = f"{base}/api/wfstate/runs/{workflow_id}/events/"
    with httpx.stream("GET", url, headers=headers, auth=AUTH, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data = "message", None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
            elif line == "" and data is not None:
                found.append((name, data))
                if name == "end":
                    return found
                if stop_after is not None and data["revision"] >= stop_after:
                    return found  # the client drops the connection
                name, data = "message", None
    return found


def revisions(events: list[tuple[str, dict[str, Any]]]) -> list[int]:
    return [data["revision"] for name, data in events if name == "checkpoint"]


def start(storage: Path, pause: str = "0.1") -> tuple[str, subprocess.Popen[str]]:
    state, _ = runs.create_run("ten_steps", {"pause": pause})
    return state.workflow_id, spawn(storage, "recover_workflows")


def finish(proc: subprocess.Popen[str]) -> None:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err


def test_every_revision_in_order_across_a_reconnection(
    server: str, wfstate_settings: dict[str, Any]
) -> None:
    storage = Path(wfstate_settings["STORAGE_DIR"])
    workflow_id, proc = start(storage)
    first = read_events(server, workflow_id, stop_after=6)
    seen = revisions(first)
    assert seen[0] == 1 and seen[-1] >= 6
    second = read_events(server, workflow_id, last_id=seen[-1])
    finish(proc)
    got = seen + revisions(second)
    final = get_store().load(workflow_id)
    assert got == list(range(1, final.revision + 1))  # every one, in order, once
    assert second[-1] == ("end", {"status": "completed"})
    last = [data for name, data in second if name == "checkpoint"][-1]
    assert last["status"] == "completed"
    steps = [s["name"] for _, d in first + second if _ == "checkpoint" for s in d["steps"]]
    assert {f"s{i}" for i in range(1, 11)} <= set(steps)
    # A finished run's stream gives its history again and ends at once.
    again = read_events(server, workflow_id)
    assert revisions(again) == list(range(1, final.revision + 1))


def test_fifty_clients_and_the_admin_still_answers(
    server: str, wfstate_settings: dict[str, Any]
) -> None:
    storage = Path(wfstate_settings["STORAGE_DIR"])
    workflow_id, proc = start(storage, pause="0.3")
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            results.append(revisions(read_events(server, workflow_id)))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(50)]
    for thread in threads:
        thread.start()
    admin = Client()
    admin.force_login(User.objects.get(username="root"))
    cookies = {"sessionid": admin.cookies["sessionid"].value}
    times: list[float] = []
    while proc.poll() is None:
        started = time.monotonic()
        page = httpx.get(f"{server}/admin/wfstate/workflowrun/", cookies=cookies, timeout=30)
        times.append(time.monotonic() - started)
        assert page.status_code == 200
    finish(proc)
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    final = get_store().load(workflow_id).revision
    assert len(results) == 50
    assert all(r == list(range(1, final + 1)) for r in results)
    # Under 1 s with 50 streams open; one sample in ten may be slower on a busy machine
    # (2 cores shared with other test runs), none by much.
    assert len(times) >= 5, times
    fast = sum(1 for t in times if t < 1.0)
    assert fast >= 0.9 * len(times) and max(times) < 3.0, sorted(times)
