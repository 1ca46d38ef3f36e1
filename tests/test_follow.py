"""A step's output, whole or followed live (``GET runs/{id}/steps/{state}/output/``),
and secrets from the executor's environment (``secret_env``) masked everywhere.

The live test runs real servers (runserver and uvicorn, the ``server`` fixture of
tests/test_events.py), a real executor process and a real HTTP client.
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from django.contrib.auth.models import User
from django.test import Client

from tests.helpers import call, spawn, wait_for
from tests.test_events import AUTH
from tests.test_events import server as server  # a fixture
from tests.test_secrets import grep_bundle, grep_tree
from wfstate import follow, runs
from wfstate.engine.steps import run_command
from wfstate.stores import get_store

pytestmark = pytest.mark.django_db(transaction=True)


def read_output(base: str, workflow_id: str, state: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of the follow stream until ``end``; each output event is
    paired with the step's status in the state file when it arrived."""
    found: list[tuple[str, dict[str, Any]]] = []
    url = f"{base}/api/wfstate/runs/{workflow_id}/steps/{state}/output/?follow=1"
    with httpx.stream("GET", url, auth=AUTH, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        name, data = "message", None
        for line in response.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = orjson.loads(line[6:])
            elif line == "" and data is not None:
                step = get_store().load(workflow_id).states.get(state)
                data["_step_status"] = str(step.status) if step else None
                found.append((name, data))
                if name == "end":
                    return found
                name, data = "message", None
    return found


def test_a_running_steps_output_is_followed_line_by_line(server: str, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    state, _ = runs.create_run("ticker", {"count": "6"})
    executor = spawn(storage, "recover_workflows")
    try:
        events = read_output(server, state.workflow_id, "tick")
    finally:
        out, err = executor.communicate(timeout=120)
    assert executor.returncode == 0, out + err
    assert events[-1][0] == "end" and events[-1][1]["status"] == "completed"
    text = "".join(data["text"] for name, data in events if name == "output")
    assert text == "".join(f"line {i}\n" for i in range(1, 7))
    # Lines came while the step was still running, not all at its end.
    live = [
        data for name, data in events if name == "output" and data["_step_status"] != "completed"
    ]
    assert live and live[0]["text"].startswith("line 1\n")
    # The live file is gone once the step has ended.
    assert not list(storage.glob("*.outputs/.*.live"))
    # The whole output without follow, as text.
    whole = httpx.get(
        f"{server}/api/wfstate/runs/{state.workflow_id}/steps/tick/output/", auth=AUTH, timeout=30
    )
    assert whole.status_code == 200 and whole.headers["content-type"].startswith("text/plain")
    assert whole.text == text


def test_the_live_file_grows_as_the_command_prints_and_masks_secrets(
    wfstate_settings: dict[str, Any],
) -> None:
    store = get_store()
    workflow_id = runs.create_run("ticker", {})[0].workflow_id
    live = follow.LiveOutput(store, workflow_id, "tick", ["hunter22"])
    path = follow.live_path(store, workflow_id, "tick", "stdout")
    assert path is not None
    results: list[Any] = []
    # The secret is printed in two pieces: masking works on whole lines.
    command = "printf 'a hun'; sleep 0.2; echo 'ter22 b'; sleep 0.3; echo second; sleep 5; echo end"
    stop = threading.Event()
    thread = threading.Thread(
        target=lambda: results.append(
            run_command(command, cwd=None, env={}, timeout=None, should_stop=stop.is_set, live=live)
        )
    )
    thread.start()
    try:
        wait_for(lambda: path.exists() and b"second" in path.read_bytes(), what="the live file")
        assert path.read_bytes() == b"a ******** b\nsecond\n"
        assert thread.is_alive()  # the command is still running
    finally:
        stop.set()
        thread.join(30)
        live.close()
    assert results[0].cancelled and "hunter22" in results[0].output  # masked later, by _masked
    assert not path.exists()


def test_whole_output_errors_and_side_files(
    wfstate_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WFSTATE_TEST_ENV_SECRET", "plain-value")
    out = call("run_workflow", "secret_env", "--json")[1]
    workflow_id = orjson.loads(out)["workflow_id"]
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))
    base = f"/api/wfstate/runs/{workflow_id}/steps"
    whole = client.get(f"{base}/show/output/")
    assert whole.status_code == 200
    body = whole.content.decode()
    assert body.startswith("env is ********\n") and body.endswith("tail ********\n")
    assert len(body) > 70000  # from the side file: the state keeps 64 KiB of it
    assert client.get(f"{base}/show/output/?stream=stderr").content == b"err ********\n"
    assert client.get(f"{base}/show/output/?stream=other").status_code == 400
    assert client.get(f"{base}/nowhere/output/").status_code == 404
    assert client.get(f"{base}/done/output/").status_code == 404  # known, has not run
    assert client.get(f"/api/wfstate/runs/{uuid.uuid4()}/steps/show/output/").status_code == 404
    # A finished step's follow stream replays its output and ends at once.
    stream = client.get(f"{base}/fail/output/?follow=1&stream=stderr")
    assert stream["Content-Type"].startswith("text/event-stream")
    content = b"".join(stream.streaming_content).decode()  # type: ignore[attr-defined]
    assert '"text":"bad ********\\n"' in content and "event: end" in content


def test_secret_env_values_are_never_in_clear(
    wfstate_settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = f"env-{uuid.uuid4().hex}"
    needle = secret.encode()
    monkeypatch.setenv("WFSTATE_TEST_ENV_SECRET", secret)
    code, out, err = call("run_workflow", "secret_env", "--json")
    assert code != 0  # the second step fails, with the secret in its stderr
    assert needle not in out.encode() and needle not in err.encode()
    doc = orjson.loads(out)
    workflow_id = doc["workflow_id"]
    assert doc["states"]["show"]["output"].startswith("env is ********\n")
    assert doc["states"]["show"]["stderr"] == "err ********\n"
    assert doc["states"]["fail"]["error"] == "exit code 3: bad ********"
    storage = Path(wfstate_settings["STORAGE_DIR"])
    assert list(storage.rglob("*.outputs/show.stdout"))  # the side file exists...
    assert grep_tree(storage, needle) == []  # ...and like the state and events log, masked
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw"))
    events = client.get(f"/api/wfstate/runs/{workflow_id}/events/")
    assert needle not in b"".join(events.streaming_content)  # type: ignore[attr-defined]
    assert needle not in client.get(f"/api/wfstate/runs/{workflow_id}/").content
    bundle = tmp_path / "run.tar.gz"
    assert call("export_workflow_run", workflow_id, "-o", str(bundle))[0] == 0
    assert grep_bundle(bundle, needle) == []
