"""Waiting runs in the admin: the answer form, who sees it, the inbox, the Waiting filter.

(In a real browser: tests/test_browser_waits.py.)
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.test import Client
from django.urls import reverse

from wfstate import runs
from wfstate.admin_signals import payload_from, signal_form
from wfstate.state import RunStatus
from wfstate.stores import get_store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("wfstate_settings")]


def staff(username: str, *codenames: str, groups: tuple[str, ...] = ()) -> Client:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in ("view_workflowrun", *codenames):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    for name in groups:
        user.groups.add(Group.objects.get_or_create(name=name)[0])
    client = Client()
    client.force_login(user)
    return client


def page_of(client: Client, workflow_id: str) -> str:
    response = client.get(reverse("admin:wfstate_workflowrun_change", args=[workflow_id]))
    assert response.status_code == 200
    return response.content.decode()


def signal_url(workflow_id: str) -> str:
    return reverse("admin:wfstate_workflowrun_signal", args=[workflow_id])


def test_who_sees_the_answer_form(admin_client: Client) -> None:
    state = runs.start_run("approval")
    assert state.status == RunStatus.WAITING
    clerk = staff("clerk")
    text = page_of(clerk, state.workflow_id)
    assert 'id="wf-waiting"' in text and "approval" in text
    assert 'id="wf-signal-form"' not in text
    # Without the permission, posting is refused too (the form is not the guard).
    denied = clerk.post(signal_url(state.workflow_id), {"wf-signal-approved": "on"})
    assert denied.status_code == 403
    assert get_store().pending_signals(state.workflow_id) == []
    # A group named in assignees, the permission for every workflow, one for this
    # workflow, or a superuser: the form.
    for client in (
        staff("manager", groups=("managers",)),
        staff("approver", "signal_workflowrun"),
        admin_client,
    ):
        assert 'id="wf-signal-form"' in page_of(client, state.workflow_id)
    Permission.objects.create(
        codename="signal_approval",
        name="Can answer approval runs",
        content_type=Permission.objects.get(codename="signal_workflowrun").content_type,
    )
    assert 'id="wf-signal-form"' in page_of(staff("one", "signal_approval"), state.workflow_id)
    # A group the step does not name: no form.
    assert 'id="wf-signal-form"' not in page_of(
        staff("other", groups=("clerks",)), state.workflow_id
    )


def test_the_form_is_generated_from_the_schema_and_sends_the_signal() -> None:
    state = runs.start_run("approval")
    manager = staff("manager", groups=("managers",))
    text = page_of(manager, state.workflow_id)
    assert 'name="wf-signal-approved"' in text and 'type="checkbox"' in text
    assert 'name="wf-signal-comment"' in text
    response = manager.post(
        signal_url(state.workflow_id),
        {"wf-signal-approved": "on", "wf-signal-comment": "fine"},
        REMOTE_ADDR="192.0.2.9",
    )
    assert response.status_code == 302
    (record,) = get_store().pending_signals(state.workflow_id)
    assert record["payload"] == {"approved": True, "comment": "fine"}
    assert record["sender"] == {"kind": "admin", "user": "manager", "remote_addr": "192.0.2.9"}
    done = runs.execute(state.workflow_id)  # what the woken task does
    assert done.status == RunStatus.COMPLETED
    assert done.states["approve"].sender["user"] == "manager"  # type: ignore[index]
    # Answered: no form any more, and a late post is refused with a message.
    assert 'id="wf-signal-form"' not in page_of(manager, state.workflow_id)
    late = manager.post(signal_url(state.workflow_id), {"wf-signal-approved": "on"}, follow=True)
    assert late.status_code == 403


def test_form_fields_by_type() -> None:
    from wfstate.definitions.model import StateDef

    sdef = StateDef(
        name="w",
        type="wait",
        signal="s",
        schema={
            "type": "object",
            "required": ["level", "size"],
            "properties": {
                "level": {"enum": ["low", "high"]},
                "size": {"type": "integer", "minimum": 1},
                "ratio": {"type": "number"},
                "tags": {"type": "array"},
            },
        },
    )
    form = signal_form(sdef, {"wf-signal-level": '"high"', "wf-signal-size": "0"})
    assert not form.is_valid() and "size" in form.errors
    form = signal_form(
        sdef, {"wf-signal-level": '"high"', "wf-signal-size": "3", "wf-signal-tags": '["a"]'}
    )
    assert form.is_valid(), form.errors
    assert payload_from(sdef, form) == {"level": "high", "size": 3, "tags": ["a"]}
    whole = StateDef(name="w", type="wait", signal="s", schema={"type": "array"})
    form = signal_form(whole, {"wf-signal-payload": "[1, 2]"})
    assert form.is_valid() and payload_from(whole, form) == [1, 2]


def test_an_invalid_answer_is_reported_and_changes_nothing(admin_client: Client) -> None:
    state = runs.start_run("approval")
    with pytest.MonkeyPatch.context() as patch:
        # A form that lets anything through: the service's schema check still refuses.
        patch.setattr("wfstate.admin.payload_from", lambda sdef, form: {"approved": "maybe"})
        response = admin_client.post(signal_url(state.workflow_id), {}, follow=True)
    assert "does not match the schema" in response.content.decode()
    assert get_store().pending_signals(state.workflow_id) == []


def test_inbox_lists_the_runs_waiting_for_me() -> None:
    mine = runs.start_run("approval")
    runs.start_run("nap")  # waiting for time: nobody answers it
    url = reverse("admin:wfstate_workflowrun_inbox")
    manager = staff("manager", groups=("managers",))
    text = manager.get(url).content.decode()
    assert mine.workflow_id[:8] in text and text.count('class="wf-inbox-row"') == 1
    clerk = staff("clerk")
    assert 'id="wf-inbox-empty"' in clerk.get(url).content.decode()
    changelist = manager.get(reverse("admin:wfstate_workflowrun_changelist")).content.decode()
    assert 'id="wf-inbox-link"' in changelist


def test_waiting_filter_and_wakes_in(admin_client: Client) -> None:
    napping = runs.start_run("nap_until", {"deadline": "2999-01-01T00:00:00Z"})
    runs.start_run("approval")
    done, _ = runs.create_run("nap_until", {"deadline": "2000-01-01T00:00:00Z"})
    runs.execute(done.workflow_id)
    changelist = reverse("admin:wfstate_workflowrun_changelist")
    text = admin_client.get(changelist).content.decode()
    assert "status__exact=waiting" in text  # the filter offers it
    waiting = admin_client.get(changelist + "?status__exact=waiting").content.decode()
    assert waiting.count("wf-badge-waiting") == 2
    assert done.workflow_id[:8] not in waiting
    text = page_of(admin_client, napping.workflow_id)
    assert "Sleeping at" in text and "Wakes in" in text
    assert 'data-state="nap"' in text  # drawn on the graph and the timeline
