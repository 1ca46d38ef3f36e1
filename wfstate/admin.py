"""The admin of workflow runs (docs/admin.md): lists read the index, a run's page its file.

A thin face: the run page's content comes from ``wfstate.admin_pages.run_page``, every action
calls one function of ``wfstate.runs`` (resume and cancel hand the work to the
background: no workflow ever runs inside a request) or ``wfstate.index``. Each action is
gated by its own permission, changes state only on POST (CSRF-protected by the admin),
and the destructive ones (cancel, delete) go through a confirmation page first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import formats, timezone
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from wfstate.admin_changelist import (
    CappedPaginator,
    WorkflowNameFilter,
    WorkflowRunChangeList,
    invalid_workflows,
)
from wfstate.admin_pages import run_page
from wfstate.admin_signals import can_answer, inbox, payload_from, signal_form
from wfstate.definitions.model import StateDef
from wfstate.exceptions import WFStateError
from wfstate.formatting import human_duration
from wfstate.index import search_runs
from wfstate.models import WorkflowRun

# Generic in django-stubs only: subscripted for the type checker, plain at run time.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[WorkflowRun]
else:
    _ModelAdmin = admin.ModelAdmin

# How many runs a confirmation page lists by name.
CONFIRM_SHOWN = 100

# The codenames of the run actions, as in WorkflowRun.Meta.permissions.
ACTION_PERMISSIONS = {
    "resume": "resume_workflowrun",
    "cancel": "cancel_workflowrun",
    "reindex": "reindex_workflowrun",
    "delete": "delete_workflowrun",
}


@admin.register(WorkflowRun)
class WorkflowRunAdmin(_ModelAdmin):
    list_display = (
        "short_id",
        "workflow_name",
        "status_badge",
        "current_state",
        "progress",
        "duration",
        "started",
    )
    list_display_links = ("short_id",)
    list_filter = ("status", WorkflowNameFilter, "started_at")
    paginator = CappedPaginator
    # Searched by get_search_results() below, by prefix, through the indexes.
    search_fields = ("workflow_id", "workflow_name")
    search_help_text = gettext_lazy(
        "A run id or its beginning (hex digits and dashes, e.g. the short id of the "
        "list), or the beginning of a workflow name (case-sensitive; a lower-case "
        "term also finds lower-case names). Several words: runs that match each one."
    )
    date_hierarchy = "started_at"
    ordering = ("-started_at", "-id")
    list_per_page = 50
    # No second COUNT(*) over the whole table, no facet counts: the number of queries
    # and their cost stay flat however many runs there are.
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = ("resume_runs", "cancel_runs", "reindex_runs", "delete_runs")
    change_list_template = "wfstate/admin/change_list.html"

    class Media:
        css = {"all": ("wfstate/wfstate.css",)}

    # --- permissions: an index of files is read-only; runs change through actions ------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def _has_action_permission(self, request: HttpRequest, action: str) -> bool:
        codename = ACTION_PERMISSIONS[action]
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def has_resume_permission(self, request: HttpRequest) -> bool:
        return self._has_action_permission(request, "resume")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._has_action_permission(request, "cancel")

    def has_reindex_permission(self, request: HttpRequest) -> bool:
        return self._has_action_permission(request, "reindex")

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        actions = super().get_actions(request)
        # Ours deletes the files too, and refuses runs that still execute.
        actions.pop("delete_selected", None)
        return actions

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        """Prefix search that the indexes answer, however many runs there are.

        A ``LIKE '%term%'`` reads every row. Here each word of the search is a range
        of the unique run-id index (a word of hex digits and dashes: the runs whose id
        begins with it) or of the workflow-name index (the runs whose workflow's name
        begins with it, as typed or in lower case); ``workflow_id >= 'ab' AND
        workflow_id < 'ac'`` is what both SQLite and PostgreSQL answer from a B-tree,
        where ``LIKE 'ab%'`` is not on SQLite (``LIKE`` is case-insensitive there).
        """
        return search_runs(queryset, search_term), False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        # Invalid definitions are shown above the runs, with their errors: only those
        # workflows are unusable (system check wfstate.W004), the others run.
        context = {"invalid_workflows": invalid_workflows(), **(extra_context or {})}
        return super().changelist_view(request, context)

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return WorkflowRunChangeList

    def get_object(
        self, request: HttpRequest, object_id: str, from_field: str | None = None
    ) -> WorkflowRun | None:
        # Pages are addressed by run id: it survives rebuilding the index.
        if from_field is None:
            found: WorkflowRun | None = (
                self.get_queryset(request).filter(workflow_id=object_id).first()
            )
            if found is not None:
                return found
        obj: WorkflowRun | None = super().get_object(request, object_id, from_field)
        return obj

    # --- columns -------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("run"), ordering="workflow_id")
    def short_id(self, obj: WorkflowRun) -> str:
        return format_html(
            '<code class="wf-id" title="{}">{}</code>', obj.workflow_id, obj.workflow_id[:8]
        )

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_badge(self, obj: WorkflowRun) -> str:
        return status_badge(obj.status, obj.get_status_display(), obj.error)

    @admin.display(description=gettext_lazy("progress"), ordering="steps_done")
    def progress(self, obj: WorkflowRun) -> str:
        total = max(obj.steps_total, obj.steps_done)
        percent = round(100 * obj.steps_done / total) if total else 0
        return format_html(
            '<span class="wf-progress" title="{} / {}">'
            '<span class="wf-progress-bar wf-bar-{}" style="width: {}%"></span></span>'
            '<span class="wf-progress-text">{}/{}</span>',
            obj.steps_done,
            total,
            obj.status,
            percent,
            obj.steps_done,
            total,
        )

    @admin.display(description=gettext_lazy("started"), ordering="started_at")
    def started(self, obj: WorkflowRun) -> str:
        if obj.started_at is None:
            return "—"
        return format_html(
            '<span class="wf-time" title="{}">{}</span>',
            obj.started_at.isoformat(),
            formats.date_format(timezone.localtime(obj.started_at), "Y-m-d H:i:s"),
        )

    @admin.display(description=gettext_lazy("duration"), ordering="duration_ms")
    def duration(self, obj: WorkflowRun) -> str:
        return human_duration(obj.duration_ms) or "—"

    # --- the run page ----------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        info = self.opts.app_label, self.opts.model_name
        wrap = self.admin_site.admin_view
        return [
            path(
                "<path:object_id>/resume/",
                wrap(self.resume_view),
                name="{}_{}_resume".format(*info),
            ),
            path(
                "<path:object_id>/cancel/",
                wrap(self.cancel_view),
                name="{}_{}_cancel".format(*info),
            ),
            path("waiting/", wrap(self.inbox_view), name="{}_{}_inbox".format(*info)),
            path(
                "<path:object_id>/signal/",
                wrap(self.signal_view),
                name="{}_{}_signal".format(*info),
            ),
            path(
                "<path:object_id>/reindex/",
                wrap(self.reindex_view),
                name="{}_{}_reindex".format(*info),
            ),
            *super().get_urls(),
        ]

    def _run_or_404(self, request: HttpRequest, object_id: str) -> WorkflowRun | None:
        obj = self.get_object(request, unquote(object_id))
        if obj is not None and not self.has_view_permission(request, obj):
            raise PermissionDenied
        return obj

    def _run_url(self, obj: WorkflowRun) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_change",
            args=(obj.workflow_id,),
            current_app=self.admin_site.name,
        )

    def _missing(self, request: HttpRequest, object_id: str) -> HttpResponse:
        self.message_user(
            request,
            _("No workflow run with id “%(id)s” in the index. Perhaps it was deleted?")
            % {"id": object_id},
            messages.WARNING,
        )
        return HttpResponseRedirect(self._changelist_url())

    def _changelist_url(self) -> str:
        return reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_changelist",
            current_app=self.admin_site.name,
        )

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        obj = self._run_or_404(request, object_id)
        if obj is None:
            return self._missing(request, object_id)
        page = run_page(obj.workflow_id)
        answer = self._answerable(request, page)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "original": obj,
            "title": f"{obj.workflow_name} · {obj.workflow_id[:8]}",
            "subtitle": None,
            "has_view_permission": True,
            "media": self.media,
            "run": page,
            "row": obj,
            "can": {action: self._can(request, action) for action in ACTION_PERMISSIONS},
            "signal_form": signal_form(answer) if answer is not None else None,
            "answer_step": answer,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "wfstate/admin/run_detail.html", context)

    # --- waiting runs: answering a wait step (wfstate.admin_signals) --------------------------

    def _answerable(self, request: HttpRequest, page: dict[str, Any]) -> StateDef | None:
        """The wait step of the page's run, if it waits for a signal this user may send."""
        state, waiting = page.get("state"), page.get("waiting")
        if state is None or not waiting or not waiting.get("signal"):
            return None
        from wfstate import runs as service

        try:
            definition = service.get_definition(state.workflow_name)
        except WFStateError:
            return None
        sdef = definition.states.get(str(waiting.get("state")))
        if sdef is None or not can_answer(request.user, state.workflow_name, sdef):
            return None
        return sdef

    def signal_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self._run_or_404(request, object_id)
        if obj is None:
            return self._missing(request, object_id)
        sdef = self._answerable(request, run_page(obj.workflow_id))
        if sdef is None:
            raise PermissionDenied
        form = signal_form(sdef, request.POST)
        if not form.is_valid():
            errors = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items())
            self.message_user(request, _("The answer was not sent: %s") % errors, messages.ERROR)
            return HttpResponseRedirect(self._run_url(obj))
        from wfstate import audit
        from wfstate import runs as service

        try:
            # The run's history names the admin user and IP; Django's LogEntry too.
            with audit.acting_as(lambda: audit.request_actor(request, "admin")):
                record, _state = service.signal_run(
                    obj.workflow_id,
                    str(sdef.signal),
                    payload_from(sdef, form),
                    sender={
                        "kind": "admin",
                        "user": request.user.get_username(),
                        "remote_addr": request.META.get("REMOTE_ADDR"),
                    },
                )
        except WFStateError as exc:
            self.message_user(request, _("The answer was not sent: %s") % exc, messages.ERROR)
        else:
            self.log_change(request, obj, f"wfstate: signal {record['signal']} ({record['id']})")
            self.message_user(
                request,
                _("Signal “%(signal)s” sent (id %(id)s); the run goes on.")
                % {"signal": record["signal"], "id": record["id"]},
                messages.SUCCESS,
            )
        return HttpResponseRedirect(self._run_url(obj))

    def inbox_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": _("Waiting for me"),
            "entries": inbox(request.user),
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "wfstate/admin/inbox.html", context)

    def _can(self, request: HttpRequest, action: str) -> bool:
        if action == "delete":
            return self.has_delete_permission(request)
        return self._has_action_permission(request, action)

    def _require(self, request: HttpRequest, action: str) -> None:
        if not self._can(request, action):
            raise PermissionDenied

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self._run_or_404(request, object_id)
        if obj is None:
            return self._missing(request, object_id)
        self._require(request, "resume")
        from_state = request.POST.get("from_state") or "current"
        allow_changed = request.POST.get("allow_changed_definition") == "on"
        self._resume(request, [obj], from_state=from_state, allow_changed=allow_changed)
        return HttpResponseRedirect(self._run_url(obj))

    def reindex_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        obj = self._run_or_404(request, object_id)
        if obj is None:
            return self._missing(request, object_id)
        self._require(request, "reindex")
        outcomes = self._reindex(request, [obj])
        if outcomes.get(obj.workflow_id) == "removed":
            return HttpResponseRedirect(self._changelist_url())
        return HttpResponseRedirect(self._run_url(obj))

    def cancel_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        obj = self._run_or_404(request, object_id)
        if obj is None:
            return self._missing(request, object_id)
        self._require(request, "cancel")
        if request.method == "POST" and request.POST.get("post") == "yes":
            self._cancel(request, [obj])
            return HttpResponseRedirect(self._run_url(obj))
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        return self._confirm(request, "cancel", [obj], single=True)

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        obj = self._run_or_404(request, object_id)
        if obj is None:
            return self._missing(request, object_id)
        self._require(request, "delete")
        if request.method == "POST" and request.POST.get("post") == "yes":
            deleted = self._delete(request, [obj])
            if deleted:
                return HttpResponseRedirect(self._changelist_url())
            return HttpResponseRedirect(self._run_url(obj))
        if request.method not in ("GET", "POST"):
            return HttpResponseNotAllowed(["GET", "POST"])
        return self._confirm(request, "delete", [obj], single=True)

    # --- confirmation pages ------------------------------------------------------------------

    CONFIRM_TEXT = {
        "cancel": (
            gettext_lazy("Cancel runs"),
            gettext_lazy(
                "A run that is executing is asked to stop: its step's processes are killed "
                "and the run is recorded cancelled within a few seconds. A run that nobody "
                "executes is marked cancelled at once. It can be resumed later."
            ),
            gettext_lazy("Yes, cancel"),
        ),
        "delete": (
            gettext_lazy("Delete runs"),
            gettext_lazy(
                "The state file, its side files and the index row of each run are deleted. "
                "This cannot be undone. Runs that are executing are refused: cancel them first."
            ),
            gettext_lazy("Yes, delete"),
        ),
    }

    def _confirm(
        self,
        request: HttpRequest,
        action: str,
        runs: QuerySet[WorkflowRun] | list[WorkflowRun],
        *,
        single: bool = False,
    ) -> TemplateResponse:
        title, warning, button = self.CONFIRM_TEXT[action]
        shown = list(runs[:CONFIRM_SHOWN]) if isinstance(runs, QuerySet) else list(runs)
        total = runs.count() if isinstance(runs, QuerySet) else len(shown)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "title": title,
            "subtitle": None,
            "warning": warning,
            "button": button,
            "action": action,
            "runs": shown,
            "total": total,
            "more": max(0, total - len(shown)),
            "single": single,
            "run_url": self._run_url(shown[0]) if single else None,
            # What the changelist posted, posted again with the confirmation.
            "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
            "select_across": request.POST.get("select_across", "0"),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "wfstate/admin/confirm.html", context)

    # --- changelist actions (each checks its permission through `permissions=`) ---------

    @admin.action(permissions=["resume"], description=gettext_lazy("Resume selected runs"))
    def resume_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._resume(request, queryset, from_state="current", allow_changed=False)

    @admin.action(permissions=["cancel"], description=gettext_lazy("Cancel selected runs…"))
    def cancel_runs(
        self, request: HttpRequest, queryset: QuerySet[WorkflowRun]
    ) -> HttpResponse | None:
        if request.POST.get("post") == "yes":
            self._cancel(request, queryset)
            return None
        return self._confirm(request, "cancel", queryset)

    @admin.action(permissions=["reindex"], description=gettext_lazy("Re-index selected runs"))
    def reindex_runs(self, request: HttpRequest, queryset: QuerySet[WorkflowRun]) -> None:
        self._reindex(request, queryset)

    @admin.action(
        permissions=["delete"], description=gettext_lazy("Delete selected runs (files and rows)…")
    )
    def delete_runs(
        self, request: HttpRequest, queryset: QuerySet[WorkflowRun]
    ) -> HttpResponse | None:
        if request.POST.get("post") == "yes":
            self._delete(request, queryset)
            return None
        return self._confirm(request, "delete", queryset)

    # --- doing it: one service call per run, failures reported per run ----------------------

    def _each(
        self,
        request: HttpRequest,
        runs: Iterable[WorkflowRun],
        call: Callable[[str], str | None],
    ) -> dict[str, str]:
        from wfstate import audit

        outcomes: dict[str, str] = {}
        action = getattr(call, "__name__", "change")  # resume, cancel, reindex, delete
        # The run's history names the admin user and IP; Django's LogEntry says it too.
        with audit.acting_as(lambda: audit.request_actor(request, "admin")):
            for obj in runs:
                try:
                    outcomes[obj.workflow_id] = call(obj.workflow_id) or "ok"
                except WFStateError as exc:
                    outcomes[obj.workflow_id] = "error"
                    self.message_user(request, f"{obj.workflow_id[:8]}: {exc}", messages.ERROR)
                else:
                    self.log_change(
                        request, obj, f"wfstate: {action} ({outcomes[obj.workflow_id]})"
                    )
        return outcomes

    def _resume(
        self,
        request: HttpRequest,
        runs: Iterable[WorkflowRun],
        *,
        from_state: str,
        allow_changed: bool,
    ) -> None:
        from wfstate import runs as service

        def resume(workflow_id: str) -> str:
            service.resume_run(
                workflow_id,
                from_state=from_state,
                allow_changed_definition=allow_changed,
                detach=True,
            )
            return "ok"

        done = sum(1 for o in self._each(request, runs, resume).values() if o == "ok")
        if done:
            self.message_user(
                request,
                ngettext(
                    "%(count)d run was handed to the background to resume.",
                    "%(count)d runs were handed to the background to resume.",
                    done,
                )
                % {"count": done},
                messages.SUCCESS,
            )

    def _cancel(self, request: HttpRequest, runs: Iterable[WorkflowRun]) -> None:
        from wfstate import runs as service

        def cancel(workflow_id: str) -> str:
            outcome, _state = service.cancel_run(workflow_id)
            return outcome

        outcomes = list(self._each(request, runs, cancel).values())
        requested, cancelled = outcomes.count("requested"), outcomes.count("cancelled")
        if cancelled:
            self.message_user(
                request,
                ngettext(
                    "%(count)d run was cancelled.", "%(count)d runs were cancelled.", cancelled
                )
                % {"count": cancelled},
                messages.SUCCESS,
            )
        if requested:
            self.message_user(
                request,
                ngettext(
                    "%(count)d executing run was asked to stop; it stops within seconds.",
                    "%(count)d executing runs were asked to stop; they stop within seconds.",
                    requested,
                )
                % {"count": requested},
                messages.SUCCESS,
            )

    def _reindex(self, request: HttpRequest, runs: Iterable[WorkflowRun]) -> dict[str, str]:
        from wfstate import index

        outcomes = self._each(request, runs, index.reindex)
        done = len(outcomes)
        self.message_user(
            request,
            ngettext(
                "%(count)d run was re-indexed from its file.",
                "%(count)d runs were re-indexed from their files.",
                done,
            )
            % {"count": done},
            messages.SUCCESS,
        )
        gone = sum(1 for o in outcomes.values() if o == "removed")
        if gone:
            self.message_user(
                request,
                ngettext(
                    "%(count)d row had no file any more and was removed.",
                    "%(count)d rows had no file any more and were removed.",
                    gone,
                )
                % {"count": gone},
                messages.WARNING,
            )
        return outcomes

    def _delete(self, request: HttpRequest, runs: Iterable[WorkflowRun]) -> int:
        from wfstate import index
        from wfstate import runs as service
        from wfstate.exceptions import RunNotFound

        def delete(workflow_id: str) -> str:
            try:
                service.delete_run(workflow_id)
            except RunNotFound:
                index.remove(workflow_id)  # the file was already gone: drop the row
            return "ok"

        done = sum(1 for o in self._each(request, runs, delete).values() if o == "ok")
        if done:
            self.message_user(
                request,
                ngettext(
                    "%(count)d run was deleted (file and row).",
                    "%(count)d runs were deleted (files and rows).",
                    done,
                )
                % {"count": done},
                messages.SUCCESS,
            )
        return done


def status_badge(status: str, label: str, title: str = "") -> str:
    return format_html(
        '<span class="wf-badge wf-badge-{}" title="{}">{}</span>', status, title or "", label
    )


from wfstate.triggers import admin as _triggers_admin  # noqa: E402,F401 - schedules, keys, queues
