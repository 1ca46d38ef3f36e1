"""The admin run page's "follow" panel shows a running step's output as it is printed,
in Chromium (issue 14). A ``manage.py recover_workflows`` child process runs a step
printing a line every 0.3 s while the page is open; the lines must appear one after
another with no reload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import shot, spawn, wait_for
from wfstate import runs

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

COUNT = 12


def test_the_follow_panel_shows_lines_as_they_are_printed(
    browser_page: Any,
    live_server: Any,
    admin_user: Any,
    wfstate_settings: dict[str, Any],
) -> None:
    page = browser_page
    storage = Path(wfstate_settings["STORAGE_DIR"])
    state, _ = runs.create_run("ticker", {"count": str(COUNT)})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/wfstate/workflowrun/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    page.goto(f"{live_server.url}/admin/wfstate/workflowrun/{state.workflow_id}/change/")
    page.evaluate("window.wfMarker = 'no reload'")
    assert page.locator("#wf-follow").is_hidden()  # nothing runs yet

    executor = spawn(storage, "recover_workflows", WFSTATE_INDEX_ON_WRITE="1")
    try:
        counts: list[int] = []

        def panel_lines() -> list[str]:
            text = str(page.locator("#wf-follow .wf-follow-output").text_content() or "")
            return text.splitlines()

        def first_line_while_running() -> bool:
            lines = panel_lines()
            return bool(lines) and get_step_status(state.workflow_id) == "running"

        wait_for(first_line_while_running, timeout=60, what="a first line while the step runs")
        assert page.locator("#wf-follow .wf-follow-step").text_content() == "tick"

        def all_lines() -> bool:
            lines = panel_lines()
            if not counts or counts[-1] != len(lines):
                counts.append(len(lines))
            return len(lines) == COUNT

        wait_for(all_lines, timeout=60, what="every line in the panel")
        wait_for(
            lambda: page.locator("#wf-follow .wf-follow-status").text_content() == "completed",
            timeout=30,
            what="the panel to say the step completed",
        )
        shot(page, "run-follow-panel")
    finally:
        executor.communicate(timeout=60)
    assert panel_lines() == [f"line {i}" for i in range(1, COUNT + 1)]
    # The lines came a few at a time, not all at the end.
    assert len(counts) >= 3, counts
    assert page.evaluate("window.wfMarker") == "no reload"


def get_step_status(workflow_id: str) -> str | None:
    from wfstate.stores import get_store

    step = get_store().load(workflow_id).states.get("tick")
    return str(step.status) if step else None
