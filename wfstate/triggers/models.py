"""The rows that decide how runs start: schedules, their ticks, idempotency keys, queues.

Unlike ``WorkflowRun`` (a projection of the state files), these rows are the truth for
what they hold: the database decides, under a unique constraint, which scheduler fires
a tick and which request owns an idempotency key (DESIGN "Second wave"). They are
imported into ``wfstate.models`` so that Django sees them as the app's models.
"""

from __future__ import annotations

from django.db import models
from django.utils.timezone import now
from django.utils.translation import gettext_lazy as _


class CatchUp(models.TextChoices):
    NONE = "none", _("none: skip missed ticks")
    LATEST = "latest", _("latest: fire the latest missed tick")
    ALL = "all", _("all: fire every missed tick")


class ScheduleSource(models.TextChoices):
    FILE = "file", _("workflow file")
    ADMIN = "admin", _("admin")


class Schedule(models.Model):
    """When to start a workflow: a cron expression (in a time zone) or a fixed period."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    workflow_name = models.CharField(_("workflow"), max_length=128, db_index=True)
    cron = models.CharField(
        _("cron"), max_length=120, blank=True, help_text=_("five fields, e.g. 0 2 * * *")
    )
    every_seconds = models.FloatField(
        _("every (seconds)"), null=True, blank=True, help_text=_("a fixed period instead of cron")
    )
    timezone = models.CharField(_("time zone"), max_length=64, default="UTC")
    inputs = models.JSONField(_("inputs"), default=dict, blank=True)
    catch_up = models.CharField(
        _("catch up"), max_length=8, choices=CatchUp.choices, default=CatchUp.LATEST
    )
    enabled = models.BooleanField(_("enabled"), default=True)
    source = models.CharField(
        _("source"), max_length=8, choices=ScheduleSource.choices, default=ScheduleSource.ADMIN
    )
    # The newest tick any scheduler has dealt with; ticks after it are due. A hint only:
    # exactly-once comes from ScheduleTick's unique constraint, not from this field.
    last_tick = models.DateTimeField(_("last tick"), null=True, blank=True)
    created_at = models.DateTimeField(_("created"), default=now)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        app_label = "wfstate"
        verbose_name = _("schedule")
        verbose_name_plural = _("schedules")
        ordering = ["workflow_name", "name"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    (models.Q(cron="") & models.Q(every_seconds__isnull=False))
                    | (~models.Q(cron="") & models.Q(every_seconds__isnull=True))
                ),
                name="wfstate_schedule_cron_xor_every",
            )
        ]

    def __str__(self) -> str:
        return self.name


class ScheduleTick(models.Model):
    """One tick of one schedule, fired once: the row is inserted before the run starts,
    and only the scheduler whose insert wins starts it."""

    schedule = models.ForeignKey(
        Schedule, on_delete=models.CASCADE, related_name="ticks", verbose_name=_("schedule")
    )
    tick = models.DateTimeField(_("tick"))
    # Chosen before the insert, so the tick always names the run it starts (a crash
    # between the insert and the run's first checkpoint is repaired with this id).
    workflow_id = models.CharField(_("run id"), max_length=36, unique=True)
    # Set once the run's first checkpoint exists: a run deleted later is never re-made.
    run_created = models.BooleanField(_("run created"), default=False)
    fired_at = models.DateTimeField(_("fired"), default=now)
    error = models.TextField(_("error"), blank=True)

    class Meta:
        app_label = "wfstate"
        verbose_name = _("schedule tick")
        verbose_name_plural = _("schedule ticks")
        ordering = ["-tick"]
        constraints = [
            models.UniqueConstraint(fields=["schedule", "tick"], name="wfstate_tick_once"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.tick.isoformat()}"


class IdempotencyKey(models.Model):
    """A client's key for one start of one workflow: the unique row names the run."""

    workflow_name = models.CharField(_("workflow"), max_length=128)
    key = models.CharField(_("key"), max_length=255)
    inputs_sha256 = models.CharField(_("inputs digest"), max_length=64)
    workflow_id = models.CharField(_("run id"), max_length=36, unique=True)
    # Set once the run's first checkpoint exists: if the run is deleted later, the key
    # is free again (for a new run with a new id), never re-making the deleted one.
    run_created = models.BooleanField(_("run created"), default=False)
    created_at = models.DateTimeField(_("created"), default=now)
    expires_at = models.DateTimeField(_("expires"), db_index=True)

    class Meta:
        app_label = "wfstate"
        verbose_name = _("idempotency key")
        verbose_name_plural = _("idempotency keys")
        constraints = [
            models.UniqueConstraint(fields=["workflow_name", "key"], name="wfstate_idem_once"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name}:{self.key}"


class QueueEntry(models.Model):
    """A run of a workflow with ``concurrency:``, from its first execution attempt until
    it ends: ``queued`` while held back by the limit, ``admitted`` while it holds a slot.

    The slots themselves are locks (see ``wfstate.triggers.concurrency``); these rows
    give the queue its order (the run's creation time) and the admin its positions.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        ADMITTED = "admitted", _("admitted")

    workflow_id = models.CharField(_("run id"), max_length=36, unique=True)
    workflow_name = models.CharField(_("workflow"), max_length=128)
    key = models.CharField(_("concurrency key"), max_length=255)
    status = models.CharField(_("status"), max_length=8, choices=Status.choices)
    run_created_at = models.DateTimeField(_("run created"))
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        app_label = "wfstate"
        verbose_name = _("queued run")
        verbose_name_plural = _("queued runs")
        ordering = ["key", "run_created_at", "workflow_id"]
        indexes = [
            models.Index(fields=["key", "status", "run_created_at"], name="wfstate_queue_order"),
        ]

    def __str__(self) -> str:
        return f"{self.key} {self.workflow_id} ({self.status})"
