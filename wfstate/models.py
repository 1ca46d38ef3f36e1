"""The index: one lightweight row per state file (docs/admin.md).

A projection of the files, never the truth: any row can be deleted and rebuilt from its
file by ``sync_workflow_index``, and when they disagree the file wins. Nothing reads a
row to decide what a run does. The admin and the API list and filter rows; a run's
detail always comes from its file.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class RunStatusChoices(models.TextChoices):
    PENDING = "pending", _("pending")
    RUNNING = "running", _("running")
    COMPLETED = "completed", _("completed")
    FAILED = "failed", _("failed")
    CANCELLED = "cancelled", _("cancelled")
    WAITING = "waiting", _("waiting")
    # Not a run status: the row of a file that cannot be parsed.
    CORRUPT = "corrupt", _("corrupt")


class WorkflowRun(models.Model):
    workflow_id = models.CharField(_("run id"), max_length=36, unique=True)
    # No index of its own: the (workflow_name, started_at, id) index below serves every
    # lookup by name, and a sync writes one index fewer per row.
    workflow_name = models.CharField(_("workflow"), max_length=128)
    workflow_version = models.CharField(_("version"), max_length=64, blank=True)
    status = models.CharField(_("status"), max_length=16, choices=RunStatusChoices.choices)
    current_state = models.CharField(_("current state"), max_length=128, blank=True)
    started_at = models.DateTimeField(_("started"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated"), null=True, blank=True)
    completed_at = models.DateTimeField(_("completed"), null=True, blank=True)
    duration_ms = models.BigIntegerField(_("duration (ms)"), null=True, blank=True)
    steps_done = models.PositiveIntegerField(_("steps done"), default=0)
    steps_total = models.PositiveIntegerField(_("steps total"), default=0)
    revision = models.PositiveIntegerField(_("revision"), default=0)
    error = models.TextField(_("error"), blank=True)
    corrupt = models.BooleanField(_("corrupt"), default=False)
    indexed_at = models.DateTimeField(_("indexed"), auto_now=True)

    class Meta:
        verbose_name = _("workflow run")
        verbose_name_plural = _("workflow runs")
        ordering = ["-started_at", "-id"]
        indexes = [
            # The admin's and the API's default listing, and their filters with it: each
            # in the list's whole order (start, then id), so that a page of a status or
            # a workflow is read from the index as it is, with no sort of the matches.
            models.Index(fields=["-started_at", "-id"], name="wfstate_run_started"),
            models.Index(fields=["status", "-started_at", "-id"], name="wfstate_run_status_order"),
            models.Index(
                fields=["workflow_name", "-started_at", "-id"], name="wfstate_run_name_order"
            ),
            models.Index(fields=["updated_at"], name="wfstate_run_updated"),
        ]
        permissions = [
            ("resume_workflowrun", "Can resume workflow runs"),
            ("cancel_workflowrun", "Can cancel workflow runs"),
            ("reindex_workflowrun", "Can re-index workflow runs"),
            ("start_workflowrun", "Can start workflow runs"),
            ("signal_workflowrun", "Can answer waiting workflow runs (send signals)"),
        ]

    def __str__(self) -> str:
        return f"{self.workflow_name} {self.workflow_id}"


# Schedules, ticks, idempotency keys and concurrency queues live in their own module.
from wfstate.triggers.models import IdempotencyKey, QueueEntry, Schedule, ScheduleTick  # noqa: E402

__all__ = [
    "IdempotencyKey",
    "QueueEntry",
    "RunStatusChoices",
    "Schedule",
    "ScheduleTick",
    "WorkflowRun",
]
