"""The admin in a real browser: Debian's Chromium driven by Playwright.

A live run is executed by a ``manage.py run_workflow`` child process and resumed by a
``manage.py db_worker`` child, both on this test's storage directory and database
(children inherit ``WFSTATE_TEST_TMP``, so they open the test database file). The test
logs in, filters the changelist, opens the run (graph with the current state outlined,
timeline), cancels it and resumes it from the run page, watching the status change.
Screenshots land in ``test-artifacts/``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, make_state, shot, wait_for
from wfstate import index
from wfstate.state import RunStatus, StepStatus
from wfstate.stores import get_store

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def child_env(storage: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "WFSTATE_STORAGE_DIR": str(storage),
        "WFSTATE_INDEX_ON_WRITE": "1",
        "PYTHONUNBUFFERED": "1",
    }


def manage(storage: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=child_env(storage),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.stdout.read() if proc.stdout else ""


def status_on_page(page: Any) -> str:
    return str(page.locator("#wf-run-status").inner_text()).strip().lower()


def wait_for_status(page: Any, wanted: str, timeout: float = 20.0) -> None:
    def reloaded() -> bool:
        page.reload()
        return status_on_page(page) == wanted

    wait_for(reloaded, timeout=timeout, what=f"the page to say {wanted}")


def test_admin_in_chromium(
    browser_page: Any,
    live_server: Any,
    admin_user: Any,
    wfstate_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    page = browser_page
    storage = Path(wfstate_settings["STORAGE_DIR"])
    # Some finished runs for the list, as their executors would have left them.
    for status, steps in (
        (RunStatus.COMPLETED, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.COMPLETED}),
        (RunStatus.FAILED, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.FAILED}),
        (RunStatus.CANCELLED, {"greet": StepStatus.CANCELLED}),
    ):
        state = make_state("demo", status, steps)
        get_store().save(state)
        index.index_state(state)

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    executor = manage(storage, "run_workflow", "index_barrier", "--input", f"dir={barrier}")
    worker = manage(storage, "db_worker", "--interval", "0.1", "--no-reload", "--no-startup-delay")
    try:
        wait_for(lambda: (barrier / "first.started").exists(), 30, "the run's first step")
        (workflow_id,) = [
            w for w in get_store().list() if get_store().load(w).workflow_name == "index_barrier"
        ]

        # Log in.
        page.goto(f"{live_server.url}/admin/login/?next=/admin/wfstate/workflowrun/")
        page.fill("#id_username", "admin")
        page.fill("#id_password", "password")
        page.click("input[type=submit]")
        page.wait_for_selector("#result_list")
        assert page.locator("#result_list tbody tr").count() == 4
        shot(page, "changelist")

        # Filter by status: only the live run is running.
        page.locator("#changelist-filter a", has_text="running").first.click()
        page.wait_for_url("**status__exact=running**")
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert "index_barrier" in rows.first.inner_text()
        shot(page, "changelist-running")

        # Open the run: graph with the current state outlined, timeline, lock notice.
        page.locator("#result_list tbody tr a", has_text=workflow_id[:8]).click()
        page.wait_for_selector("svg.wf-graph")
        current = page.locator('svg.wf-graph g.wf-current[data-state="first"]')
        assert current.count() == 1
        assert "wf-status-running" in (current.get_attribute("class") or "")
        assert page.locator("svg.wf-graph g.wf-node").count() == 5
        assert page.locator('#wf-timeline .wf-tl-bar[data-state="first"]').is_visible()
        assert "locked by pid" in page.locator("#wf-lock-notice").inner_text()
        assert status_on_page(page) == "running"
        shot(page, "run-running")

        # Cancel: a confirmation page, then the executor is asked to stop.
        page.click("#wf-cancel")
        page.wait_for_selector("#wf-confirm-submit")
        shot(page, "cancel-confirmation")
        page.click("#wf-confirm-submit")
        page.wait_for_selector("#wf-run-status")
        assert "asked to stop" in page.locator(".messagelist").inner_text()
        wait_for_status(page, "cancelled")
        wait_for(lambda: executor.poll() is not None, 15, "the executor to exit")
        assert executor.returncode == 3  # the run ended cancelled
        page.reload()
        assert page.locator('svg.wf-graph g.wf-status-cancelled[data-state="first"]').count() == 1
        shot(page, "run-cancelled")

        # Resume from the page: the worker executes it in the background to the end.
        for step in ("first", "second", "third"):
            (barrier / f"{step}.go").touch()
        page.select_option("#wf-from", "current")
        page.click("#wf-resume")
        page.wait_for_selector("#wf-run-status")
        assert "handed to the background" in page.locator(".messagelist").inner_text()
        wait_for_status(page, "completed", timeout=30)
        assert page.locator("svg.wf-graph g.wf-status-completed").count() == 4
        assert page.locator('svg.wf-graph g.wf-current[data-state="done"]').count() == 1
        assert page.locator("#wf-timeline .wf-tl-bar:not(.wf-tl-rewound)").count() == 4
        # The attempt the resume rewound past stays on the timeline, faded.
        assert page.locator('#wf-timeline .wf-tl-rewound[data-state="first"]').count() == 1
        assert "resume" in page.locator(".wf-history").inner_text()
        shot(page, "run-completed")

        # And the changelist says so too (the row followed the file).
        page.goto(f"{live_server.url}/admin/wfstate/workflowrun/?status__exact=completed")
        assert page.locator("#result_list tbody tr").count() == 2
    finally:
        for step in ("first", "second", "third"):
            (barrier / f"{step}.go").touch()
        executor_out = stop(executor)
        worker_out = stop(worker)
    assert "Traceback" not in executor_out, executor_out
    assert "Traceback" not in worker_out, worker_out
