"""The admin run page follows its run live, in Chromium (issue 14, acceptance 2, part).

A ten-step run is executed by a ``manage.py recover_workflows`` child process while
the page is open; the page must show the run advance and end without being reloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.helpers import shot, spawn, wait_for
from wfstate import runs

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def status(page: Any) -> str:
    return str(page.locator("#wf-run-status").inner_text()).strip().lower()


def test_the_run_page_moves_with_no_reload(
    browser_page: Any,
    live_server: Any,
    admin_user: Any,
    wfstate_settings: dict[str, Any],
) -> None:
    page = browser_page
    storage = Path(wfstate_settings["STORAGE_DIR"])
    state, _ = runs.create_run("ten_steps", {"pause": "0.4"})
    page.goto(f"{live_server.url}/admin/login/?next=/admin/wfstate/workflowrun/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "password")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")
    page.goto(f"{live_server.url}/admin/wfstate/workflowrun/{state.workflow_id}/change/")
    assert status(page) == "pending"
    page.evaluate("window.wfMarker = 'no reload'")

    executor = spawn(storage, "recover_workflows", WFSTATE_INDEX_ON_WRITE="1")
    try:
        seen: list[str] = []

        def advanced_to_the_end() -> bool:
            current = page.locator("#wf-current-state").inner_text().strip()
            if not seen or seen[-1] != current:
                seen.append(current)
            return status(page) == "completed"

        wait_for(advanced_to_the_end, timeout=60, what="the page to show the run completed")
        shot(page, "run-live-completed")
    finally:
        executor.communicate(timeout=60)
    assert page.evaluate("window.wfMarker") == "no reload"
    # The steps moved on the page, one after another (at least a few of them observed).
    steps = [s for s in seen if s.startswith("s")]
    assert len(steps) >= 3, seen
    assert steps == sorted(steps, key=lambda s: int(s[1:])), seen
    assert page.locator("svg.wf-graph g.wf-status-completed").count() == 11  # and done
    for i in range(1, 11):
        assert page.locator(f'#wf-timeline .wf-tl-bar[data-state="s{i}"]').count() == 1
