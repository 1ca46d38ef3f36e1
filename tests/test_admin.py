"""The admin (SPEC §7): changelist from the index, run page from the file, gated actions."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse

from tests.helpers import make_state
from wfstate import index
from wfstate.models import WorkflowRun
from wfstate.state import RunStatus, StepStatus, WorkflowState
from wfstate.stores import get_store

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("wfstate_settings")]

CHANGELIST = "admin:wfstate_workflowrun_changelist"


def url(name: str, workflow_id: str) -> str:
    return reverse(f"admin:wfstate_workflowrun_{name}", args=[workflow_id])


def saved(state: WorkflowState) -> WorkflowState:
    get_store().save(state)
    index.index_state(state)
    return state


@pytest.fixture
def running() -> WorkflowState:
    """A demo run in flight at ``prepare`` (no executor: as if it crashed)."""
    return saved(
        make_state(
            "demo",
            RunStatus.RUNNING,
            {"greet": StepStatus.COMPLETED, "prepare": StepStatus.RUNNING},
        )
    )


@pytest.fixture
def failed() -> WorkflowState:
    return saved(
        make_state(
            "demo", RunStatus.FAILED, {"greet": StepStatus.COMPLETED, "prepare": StepStatus.FAILED}
        )
    )


def status_of(state: WorkflowState) -> str:
    return str(get_store().load(state.workflow_id).status)


def staff(*codenames: str) -> Client:
    user = User.objects.create_user(f"staff{User.objects.count()}", password="pw", is_staff=True)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client()
    client.force_login(user)
    return client


# --- changelist -------------------------------------------------------------------------------


def test_changelist_shows_badges_progress_and_filters(
    admin_client: Client, running: WorkflowState, failed: WorkflowState
) -> None:
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="wf-badge wf-badge-running"' in html
    assert 'class="wf-badge wf-badge-failed"' in html
    assert running.workflow_id[:8] in html
    assert 'class="wf-progress"' in html
    assert url("change", running.workflow_id) in html  # linked by run id
    assert "wfstate/wfstate.css" in html
    # Filter by status, search by id prefix and by name.
    html = admin_client.get(reverse(CHANGELIST), {"status__exact": "failed"}).content.decode()
    assert failed.workflow_id[:8] in html
    assert running.workflow_id[:8] not in html
    html = admin_client.get(reverse(CHANGELIST), {"q": running.workflow_id[:13]}).content.decode()
    assert running.workflow_id[:8] in html
    assert failed.workflow_id[:8] not in html
    html = admin_client.get(reverse(CHANGELIST), {"q": "dem"}).content.decode()
    assert running.workflow_id[:8] in html
    assert failed.workflow_id[:8] in html
    # The date hierarchy drills down to the day the runs started.
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "started_at__day=27" in html


def test_search_by_id_prefix_and_name_prefix() -> None:
    from wfstate.index import search_q

    ids = [
        "3f2a0000-0000-4000-8000-000000000001",
        "3f2b0000-0000-4000-8000-000000000002",
        "ab000000-0000-4000-8000-000000000003",
    ]
    for workflow_id, name in zip(ids, ("release", "release-nightly", "Backup"), strict=True):
        WorkflowRun.objects.create(workflow_id=workflow_id, workflow_name=name, status="running")

    def found(*words: str) -> set[str]:
        queryset = WorkflowRun.objects.all()
        for word in words:
            queryset = queryset.filter(search_q(word))
        return {workflow_id[:4] for workflow_id in queryset.values_list("workflow_id", flat=True)}

    assert found("3f2") == {"3f2a", "3f2b"}
    assert found("3F2A") == {"3f2a"}  # ids in any case
    assert found(ids[1]) == {"3f2b"}  # the whole id
    assert found(ids[1][:10]) == {"3f2b"}  # through the dash
    assert found("rel") == {"3f2a", "3f2b"}
    assert found("release-n") == {"3f2b"}
    assert found("Back") == {"ab00"}
    assert found("back") == set()  # names are case-sensitive...
    assert found("B") == {"ab00"}
    assert found("ab") == {"ab00"}  # hex: an id prefix, or a name prefix
    assert found("eas") == set()  # ...and matched from their beginning
    assert found("rel", "3f2b") == {"3f2b"}  # several words: each must match
    assert found("zzz") == set()


def test_search_help_text_tells_how_search_works(admin_client: Client) -> None:
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "beginning of a workflow name" in html


def test_date_hierarchy_offers_every_period_between_first_and_last(admin_client: Client) -> None:
    for started in (
        "2025-03-02T10:00:00.000000Z",
        "2025-06-02T10:00:00.000000Z",
        "2026-11-27T11:00:00.000000Z",
    ):
        state = make_state()
        state.started_at = started
        saved(state)
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "started_at__year=2025" in html
    assert "started_at__year=2026" in html
    html = admin_client.get(reverse(CHANGELIST), {"started_at__year": "2025"}).content.decode()
    # March to June, the months between included (one MIN/MAX query, no per-row scan).
    for month in (3, 4, 5, 6):
        assert f"started_at__month={month}" in html
    assert "started_at__month=2" not in html
    assert "started_at__month=7" not in html
    html = admin_client.get(
        reverse(CHANGELIST), {"started_at__year": "2026", "started_at__month": "11"}
    ).content.decode()
    assert "started_at__day=27" in html
    assert "started_at__day=26" not in html
    assert "started_at__day=28" not in html


def test_corrupt_file_is_a_corrupt_row_and_its_page_shows_the_error(
    admin_client: Client, running: WorkflowState
) -> None:
    get_store().path_for(running.workflow_id).write_bytes(b'{"schema_version": 1, "work')
    index.sync()
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert 'class="wf-badge wf-badge-corrupt"' in html
    response = admin_client.get(url("change", running.workflow_id))
    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="wf-file-error"' in html
    assert "is not valid JSON" in html
    assert "The state file is corrupt" in html


# --- the run page -----------------------------------------------------------------------------


def test_run_page_reads_the_file_and_draws_graph_and_timeline(
    admin_client: Client, running: WorkflowState
) -> None:
    # The row says something else: the page shows the file.
    WorkflowRun.objects.filter(workflow_id=running.workflow_id).update(current_state="stale")
    response = admin_client.get(url("change", running.workflow_id))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<dd id="wf-current-state">prepare</dd>' in html
    assert "<svg" in html
    # Every state of the definition is a node; the current one is outlined.
    for name in ("greet", "prepare", "checks", "count_letters", "flaky", "report"):
        assert f'data-state="{name}"' in html
    current = re.search(r'<g class="([^"]*)" data-state="prepare"', html)
    assert current is not None
    assert "wf-current" in current.group(1)
    assert "wf-status-running" in current.group(1)
    greet = re.search(r'<g class="([^"]*)" data-state="greet"', html)
    assert greet is not None
    assert "wf-status-completed" in greet.group(1)
    assert "wf-current" not in greet.group(1)
    assert "wf-edge-failure" in html
    assert "wf-edge-branch" in html
    # Timeline: one bar per started step, positioned in percent.
    assert re.search(
        r'class="wf-tl-bar wf-bar-completed" data-state="greet" style="left: 0\.000%', html
    )
    assert 'class="wf-tl-bar wf-bar-running" data-state="prepare"' in html
    # Inputs, outputs.
    assert "greet output" in html
    assert "who" in html


def test_run_page_without_a_definition_draws_the_states_of_the_file(admin_client: Client) -> None:
    state = saved(
        make_state(
            "gone-workflow",
            RunStatus.FAILED,
            {"a": StepStatus.COMPLETED, "b": StepStatus.FAILED},
        )
    )
    html = admin_client.get(url("change", state.workflow_id)).content.decode()
    assert "drawn from the states in the file" in html
    assert 'data-state="a"' in html
    assert 'data-state="b"' in html
    assert "boom" in html  # the failed step's error


def test_run_page_says_who_holds_the_run_lock(admin_client: Client, running: WorkflowState) -> None:
    with get_store().run_lock(running.workflow_id) as owner:
        html = admin_client.get(url("change", running.workflow_id)).content.decode()
    assert 'id="wf-lock-notice"' in html
    assert f"locked by pid {owner['pid']} on host {owner['host']}" in html
    html = admin_client.get(url("change", running.workflow_id)).content.decode()
    assert 'id="wf-lock-notice"' not in html


def test_truncated_output_points_at_the_side_file(admin_client: Client) -> None:
    state = make_state("demo", RunStatus.COMPLETED, {"greet": StepStatus.COMPLETED})
    state.states["greet"].output_truncated = True
    saved(state)
    html = admin_client.get(url("change", state.workflow_id)).content.decode()
    assert "Output truncated here" in html
    assert f"{state.workflow_id}.outputs" in html


# --- actions ----------------------------------------------------------------------------------


def test_cancel_goes_through_a_confirmation_page(
    admin_client: Client, running: WorkflowState
) -> None:
    response = admin_client.get(url("cancel", running.workflow_id))
    assert response.status_code == 200
    assert 'id="wf-confirm-submit"' in response.content.decode()
    assert status_of(running) == "running"  # a GET changes nothing
    response = admin_client.post(url("cancel", running.workflow_id), {"post": "yes"})
    assert response.status_code == 302
    assert status_of(running) == "cancelled"  # nobody executed it: marked at once
    assert WorkflowRun.objects.get(workflow_id=running.workflow_id).status == "cancelled"
    messages = [str(m) for m in response.wsgi_request._messages]  # type: ignore[attr-defined]
    assert "1 run was cancelled." in messages


def test_cancel_of_an_executing_run_asks_its_executor(
    admin_client: Client, running: WorkflowState
) -> None:
    store = get_store()
    with store.run_lock(running.workflow_id):
        response = admin_client.post(url("cancel", running.workflow_id), {"post": "yes"})
        assert response.status_code == 302
        assert store.cancel_requested(running.workflow_id)
    assert status_of(running) == "running"  # the executor records it, not the request


def test_resume_hands_the_run_to_the_background(
    admin_client: Client, failed: WorkflowState
) -> None:
    from django_tasks_db.models import DBTaskResult

    assert admin_client.get(url("resume", failed.workflow_id)).status_code == 405
    response = admin_client.post(url("resume", failed.workflow_id), {"from_state": "current"})
    assert response.status_code == 302
    state = get_store().load(failed.workflow_id)
    assert state.status == RunStatus.PENDING  # rewound, not executed in the request
    assert state.history[-1]["event"] == "resume"
    task = DBTaskResult.objects.get()
    assert task.args_kwargs["args"] == [failed.workflow_id]
    assert WorkflowRun.objects.get(workflow_id=failed.workflow_id).status == "pending"


def test_resume_refusal_is_a_message_not_an_error(
    admin_client: Client, running: WorkflowState
) -> None:
    with get_store().run_lock(running.workflow_id):
        response = admin_client.post(url("resume", running.workflow_id), follow=True)
    assert response.status_code == 200
    assert "is being executed by" in response.content.decode()


def test_reindex_makes_the_file_win(admin_client: Client, running: WorkflowState) -> None:
    WorkflowRun.objects.filter(workflow_id=running.workflow_id).update(status="completed")
    assert admin_client.get(url("reindex", running.workflow_id)).status_code == 405
    assert WorkflowRun.objects.get(workflow_id=running.workflow_id).status == "completed"
    admin_client.post(url("reindex", running.workflow_id))
    assert WorkflowRun.objects.get(workflow_id=running.workflow_id).status == "running"


def test_delete_removes_file_and_row_after_confirmation(
    admin_client: Client, failed: WorkflowState
) -> None:
    path = get_store().path_for(failed.workflow_id)
    response = admin_client.get(url("delete", failed.workflow_id))
    assert response.status_code == 200
    assert path.exists()
    response = admin_client.post(url("delete", failed.workflow_id), {"post": "yes"})
    assert response.status_code == 302
    assert not path.exists()
    assert not WorkflowRun.objects.filter(workflow_id=failed.workflow_id).exists()


def test_delete_refuses_an_executing_run(admin_client: Client, running: WorkflowState) -> None:
    with get_store().run_lock(running.workflow_id):
        response = admin_client.post(
            url("delete", running.workflow_id), {"post": "yes"}, follow=True
        )
    assert "cancel it before deleting it" in response.content.decode()
    assert get_store().exists(running.workflow_id)


def test_changelist_actions(
    admin_client: Client, running: WorkflowState, failed: WorkflowState
) -> None:
    changelist = reverse(CHANGELIST)
    pks = [str(WorkflowRun.objects.get(workflow_id=s.workflow_id).pk) for s in (running, failed)]
    # Cancel: a confirmation page first, then the cancellation; the finished run is refused.
    response = admin_client.post(changelist, {"action": "cancel_runs", "_selected_action": pks})
    assert response.status_code == 200
    assert "Yes, cancel" in response.content.decode()
    assert status_of(running) == "running"
    response = admin_client.post(
        changelist,
        {"action": "cancel_runs", "_selected_action": pks, "post": "yes"},
        follow=True,
    )
    html = response.content.decode()
    assert "1 run was cancelled." in html
    assert "already ended failed" in html
    assert status_of(running) == "cancelled"
    # Resume both (each is cancelled or failed): handed to the background.
    response = admin_client.post(
        changelist, {"action": "resume_runs", "_selected_action": pks}, follow=True
    )
    assert "2 runs were handed to the background to resume." in response.content.decode()
    assert status_of(running) == "pending"
    # Re-index.
    WorkflowRun.objects.update(status="completed")
    response = admin_client.post(
        changelist, {"action": "reindex_runs", "_selected_action": pks}, follow=True
    )
    assert "2 runs were re-indexed from their files." in response.content.decode()
    assert set(WorkflowRun.objects.values_list("status", flat=True)) == {"pending"}
    # Delete: confirmation, then files and rows go.
    response = admin_client.post(changelist, {"action": "delete_runs", "_selected_action": pks})
    assert "Yes, delete" in response.content.decode()
    assert WorkflowRun.objects.count() == 2
    response = admin_client.post(
        changelist, {"action": "delete_runs", "_selected_action": pks, "post": "yes"}, follow=True
    )
    assert "2 runs were deleted (files and rows)." in response.content.decode()
    assert WorkflowRun.objects.count() == 0
    assert get_store().list() == []


# --- permissions, CSRF, GETs -------------------------------------------------------------------


def test_staff_without_wfstate_permissions_sees_no_run_and_can_do_nothing(
    running: WorkflowState,
) -> None:
    client = staff()
    assert client.get(reverse(CHANGELIST)).status_code == 403
    assert client.get(url("change", running.workflow_id)).status_code == 403
    pk = str(WorkflowRun.objects.get().pk)
    for action in ("cancel_runs", "resume_runs", "reindex_runs", "delete_runs"):
        response = client.post(
            reverse(CHANGELIST), {"action": action, "_selected_action": [pk], "post": "yes"}
        )
        assert response.status_code == 403
    for name in ("resume", "cancel", "reindex", "delete"):
        assert client.post(url(name, running.workflow_id), {"post": "yes"}).status_code == 403
    assert status_of(running) == "running"
    assert WorkflowRun.objects.get().status == "running"
    assert "Workflow runs" not in client.get(reverse("admin:index")).content.decode()


def test_view_permission_alone_shows_runs_but_no_action(running: WorkflowState) -> None:
    client = staff("view_workflowrun")
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert running.workflow_id[:8] in html
    assert "cancel_runs" not in html  # no action offered
    html = client.get(url("change", running.workflow_id)).content.decode()
    assert 'id="wf-cancel"' not in html
    assert 'id="wf-delete"' not in html
    assert 'id="wf-reindex"' not in html
    pk = str(WorkflowRun.objects.get().pk)
    response = client.post(
        reverse(CHANGELIST), {"action": "cancel_runs", "_selected_action": [pk], "post": "yes"}
    )
    assert status_of(running) == "running"
    for name in ("resume", "cancel", "reindex", "delete"):
        assert client.post(url(name, running.workflow_id), {"post": "yes"}).status_code == 403
    assert status_of(running) == "running"


def test_each_action_needs_its_own_permission(running: WorkflowState) -> None:
    client = staff("view_workflowrun", "cancel_workflowrun")
    html = client.get(url("change", running.workflow_id)).content.decode()
    assert 'id="wf-cancel"' in html
    assert 'id="wf-delete"' not in html
    assert client.post(url("delete", running.workflow_id), {"post": "yes"}).status_code == 403
    assert client.post(url("reindex", running.workflow_id)).status_code == 403
    assert client.post(url("cancel", running.workflow_id), {"post": "yes"}).status_code == 302
    assert status_of(running) == "cancelled"
    assert client.post(url("resume", running.workflow_id)).status_code == 403
    assert status_of(running) == "cancelled"


def test_actions_without_a_csrf_token_are_refused(admin_user: User, running: WorkflowState) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    pk = str(WorkflowRun.objects.get().pk)
    response = client.post(
        reverse(CHANGELIST), {"action": "cancel_runs", "_selected_action": [pk], "post": "yes"}
    )
    assert response.status_code == 403
    for name in ("cancel", "delete", "resume", "reindex"):
        assert client.post(url(name, running.workflow_id), {"post": "yes"}).status_code == 403
    assert status_of(running) == "running"
    assert get_store().exists(running.workflow_id)
    # With the token from the confirmation page, the same POST works.
    page = client.get(url("cancel", running.workflow_id)).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None
    response = client.post(
        url("cancel", running.workflow_id), {"post": "yes", "csrfmiddlewaretoken": token.group(1)}
    )
    assert response.status_code == 302
    assert status_of(running) == "cancelled"


def test_no_get_changes_state(admin_client: Client, running: WorkflowState) -> None:
    before = get_store().read_bytes(running.workflow_id)
    row_before = WorkflowRun.objects.values().get()
    for name in ("resume", "cancel", "reindex", "delete", "change"):
        response = admin_client.get(url(name, running.workflow_id), {"post": "yes"})
        assert response.status_code in (200, 405)
    pk = str(WorkflowRun.objects.get().pk)
    for action in ("cancel_runs", "resume_runs", "reindex_runs", "delete_runs"):
        admin_client.get(
            reverse(CHANGELIST), {"action": action, "_selected_action": pk, "post": "yes"}
        )
    assert get_store().read_bytes(running.workflow_id) == before
    assert WorkflowRun.objects.values().get() == row_before


def test_add_and_change_are_not_offered(admin_client: Client, running: WorkflowState) -> None:
    assert admin_client.get(reverse("admin:wfstate_workflowrun_add")).status_code == 403
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert reverse("admin:wfstate_workflowrun_add") not in html


def test_unknown_run_redirects_with_a_message(admin_client: Client) -> None:
    response = admin_client.get(url("change", "00000000-0000-4000-8000-000000000000"), follow=True)
    assert "No workflow run with id" in response.content.decode()


def test_demo_admin_command_is_idempotent() -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("ensure_demo_admin", stdout=out)
    call_command("ensure_demo_admin", stdout=out)
    assert User.objects.filter(username="admin", is_superuser=True).count() == 1
    assert "created: demo admin user 'admin', password 'admin'" in out.getvalue()
    assert "exists: demo admin user" in out.getvalue()
    assert "http://127.0.0.1:8000/admin/" in out.getvalue()
    assert Any is not None
