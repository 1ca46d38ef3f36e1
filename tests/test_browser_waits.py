"""Answering a waiting run in Chromium (Playwright), as tests/test_browser.py drives it.

A ``db_worker`` child executes the run to its wait step, where it parks. A staff user
without the permission sees the run but no form; a manager (a group the step names in
``assignees:``) fills the form generated from the step's schema and submits it; the
signal wakes the run through the worker, which completes it along the approved branch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission, User

from tests.helpers import shot, spawn, wait_for
from wfstate import runs
from wfstate.state import RunStatus

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def status_on_page(page: Any) -> str:
    return str(page.locator("#wf-run-status").inner_text()).strip().lower()


def wait_for_page_status(page: Any, wanted: str, timeout: float = 20.0) -> None:
    def reloaded() -> bool:
        page.reload()
        return status_on_page(page) == wanted

    wait_for(reloaded, timeout=timeout, what=f"the page to say {wanted}")


def stop(proc: Any) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except Exception:
            proc.kill()
            proc.wait(10)
    out, err = proc.communicate()
    return f"{out}{err}"


def staff_user(username: str, *, groups: tuple[str, ...] = ()) -> User:
    user = User.objects.create_user(username, password="password", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_workflowrun"))
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    return user


def log_in(page: Any, live_server: Any, username: str, next_url: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{live_server.url}/admin/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", "password")
    page.click("input[type=submit]")


def test_answering_a_waiting_run_in_chromium(
    browser_page: Any, live_server: Any, wfstate_settings: dict[str, Any]
) -> None:
    page = browser_page
    storage = Path(wfstate_settings["STORAGE_DIR"])
    staff_user("clerk")
    staff_user("manager", groups=("managers",))
    worker = spawn(
        storage,
        "db_worker",
        "--interval",
        "0.1",
        "--no-reload",
        "--no-startup-delay",
        WFSTATE_INDEX_ON_WRITE="1",
    )
    try:
        state, _ = runs.create_run("approval", {"item": "crate"})
        from wfstate.tasks import enqueue_execution

        enqueue_execution(state.workflow_id)
        wait_for(
            lambda: runs.load_run(state.workflow_id).status == RunStatus.WAITING,
            60,
            "the worker to park the run",
        )
        run_url = f"/admin/wfstate/workflowrun/{state.workflow_id}/change/"

        # A staff user without the permission: the run, what it waits for, no form.
        log_in(page, live_server, "clerk", run_url)
        page.wait_for_selector("#wf-waiting")
        assert status_on_page(page) == "waiting"
        assert "approval" in page.locator("#wf-waiting").inner_text()
        assert page.locator("#wf-signal-form").count() == 0
        assert page.locator('svg.wf-graph g.wf-current[data-state="approve"]').count() == 1
        shot(page, "waiting-clerk")

        # The manager: the inbox lists the run; its page has the generated form.
        log_in(page, live_server, "manager", "/admin/wfstate/workflowrun/waiting/")
        page.wait_for_selector("#wf-inbox")
        page.locator("#wf-inbox a", has_text=state.workflow_id[:8]).click()
        page.wait_for_selector("#wf-signal-form")
        shot(page, "waiting-manager")
        page.check("#id_wf-signal-approved")
        page.fill("#id_wf-signal-comment", "looks right")
        page.click("#wf-signal-submit")
        page.wait_for_selector(".messagelist")
        assert "sent" in page.locator(".messagelist").inner_text()
        wait_for_page_status(page, "completed", timeout=60)
        from wfstate.models import WorkflowRun

        wait_for(
            lambda: WorkflowRun.objects.filter(
                workflow_id=state.workflow_id, status="completed"
            ).exists(),
            30,
            "the index row to follow",
        )
        assert page.locator('svg.wf-graph g.wf-current[data-state="shipped"]').count() == 1
        assert page.locator("#wf-signal-form").count() == 0
        shot(page, "waiting-answered")
    finally:
        output = stop(worker)
    done = runs.load_run(state.workflow_id)
    assert done.status == RunStatus.COMPLETED, output
    approve = done.states["approve"]
    assert approve.payload == {"approved": True, "comment": "looks right"}
    assert approve.sender is not None and approve.sender["user"] == "manager"
    assert done.states["ship"].output == "shipping crate, approved by looks right\n"
