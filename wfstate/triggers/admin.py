"""Admin of schedules (with their next fire times), idempotency keys and queued runs.

Registered by ``wfstate.admin`` (one import line). Schedules from workflow files are
listed like the admin's own; their fields come from the file (only ``enabled`` is the
admin's to change), so they are read-only here apart from that flag.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import formats
from django.utils.html import format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from wfstate.exceptions import WFStateError
from wfstate.triggers import concurrency, schedules
from wfstate.triggers.models import (
    IdempotencyKey,
    QueueEntry,
    Schedule,
    ScheduleSource,
    ScheduleTick,
)


class ScheduleForm(forms.ModelForm[Schedule]):
    class Meta:
        model = Schedule
        fields = [
            "name",
            "workflow_name",
            "cron",
            "every_seconds",
            "timezone",
            "inputs",
            "catch_up",
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        from wfstate.definitions.triggers import MIN_EVERY, check_cron, check_timezone
        from wfstate.exceptions import WFStateError
        from wfstate.runs import get_definition

        data = super().clean() or {}
        cron, every = data.get("cron") or "", data.get("every_seconds")
        if bool(cron) == (every is not None):
            raise forms.ValidationError(_("Give either a cron expression or a period, not both."))
        if cron:
            try:
                check_cron(cron)
            except ValueError as exc:
                self.add_error("cron", str(exc))
        if every is not None and every < MIN_EVERY:
            self.add_error("every_seconds", _("The shortest period is 1 second."))
        try:
            check_timezone(data.get("timezone") or "UTC")
        except ValueError as exc:
            self.add_error("timezone", str(exc))
        name = data.get("workflow_name")
        if name:
            try:
                from wfstate.definitions import validate_inputs

                validate_inputs(get_definition(name), dict(data.get("inputs") or {}))
            except WFStateError as exc:
                self.add_error("workflow_name" if "workflow" in exc.code else "inputs", str(exc))
        return data


class ScheduleTickInline(admin.TabularInline[ScheduleTick, Schedule]):
    model = ScheduleTick
    extra = 0
    max_num = 0
    can_delete = False
    ordering = ["-tick"]
    fields = ["tick", "workflow_id", "fired_at", "error"]
    readonly_fields = ["tick", "workflow_id", "fired_at", "error"]
    verbose_name_plural = _("recent ticks")

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScheduleTick]:
        return super().get_queryset(request).order_by("-tick")


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin[Schedule]):
    form = ScheduleForm
    list_display = [
        "name",
        "workflow_name",
        "when",
        "timezone",
        "catch_up",
        "enabled",
        "source",
        "last_tick",
        "next_fire_times",
    ]
    list_filter = ["enabled", "source", "catch_up", "workflow_name"]
    search_fields = ["name", "workflow_name"]
    actions = ["enable_schedules", "disable_schedules", "start_now"]
    inlines = [ScheduleTickInline]

    @admin.display(description=_("when"))
    def when(self, obj: Schedule) -> str:
        if obj.cron:
            return obj.cron
        return f"every {obj.every_seconds:g}s"

    @admin.display(description=_("next fire times"))
    def next_fire_times(self, obj: Schedule) -> str:
        if not obj.enabled:
            return "—"
        ticks = schedules.next_ticks(obj, 3)
        return (
            format_html_join(", ", "{}", ((formats.date_format(t, "Y-m-d H:i:s"),) for t in ticks))
            or "—"
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Schedule | None = None) -> Any:
        if obj is not None and obj.source == ScheduleSource.FILE:
            # Defined by its workflow file: change it there; only "enabled" is ours.
            return [f for f in ScheduleForm.Meta.fields if f != "enabled"]
        return []

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        if not change:
            obj.source = ScheduleSource.ADMIN
        super().save_model(request, obj, form, change)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Schedule], on: bool) -> None:
        count = queryset.update(enabled=on)
        message = (
            ngettext("%d schedule enabled.", "%d schedules enabled.", count)
            if on
            else ngettext("%d schedule disabled.", "%d schedules disabled.", count)
        )
        self.message_user(request, message % count, messages.SUCCESS)

    @admin.action(description=_("Enable selected schedules"), permissions=["change"])
    def enable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description=_("Disable selected schedules"), permissions=["change"])
    def disable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_enabled(request, queryset, False)

    @admin.action(description=_("Start a run of selected schedules now"), permissions=["change"])
    def start_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        from wfstate.triggers.schedules import start_now

        started = 0
        for schedule in queryset:
            try:
                start_now(schedule, user=request.user.get_username())
            except WFStateError as exc:
                self.message_user(request, f"{schedule.name}: {exc}", messages.ERROR)
                continue
            started += 1
        if started:
            message = ngettext("%d run started.", "%d runs started.", started) % started
            self.message_user(request, message, messages.SUCCESS)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin[IdempotencyKey]):
    list_display = ["key", "workflow_name", "workflow_id", "created_at", "expires_at"]
    list_filter = ["workflow_name"]
    search_fields = ["key", "workflow_id"]
    readonly_fields = [
        "key",
        "workflow_name",
        "inputs_sha256",
        "workflow_id",
        "created_at",
        "expires_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(QueueEntry)
class QueueEntryAdmin(admin.ModelAdmin[QueueEntry]):
    list_display = ["workflow_id", "workflow_name", "key", "status", "position", "run_created_at"]
    list_filter = ["status", "workflow_name"]
    search_fields = ["workflow_id", "key"]
    readonly_fields = ["workflow_id", "workflow_name", "key", "status", "run_created_at"]

    @admin.display(description=_("queue position"))
    def position(self, obj: QueueEntry) -> str:
        position = concurrency.queue_position(obj.workflow_id)
        return "—" if position is None else str(position + 1)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
