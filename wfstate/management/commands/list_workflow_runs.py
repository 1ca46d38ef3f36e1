"""``list_workflow_runs``: runs from the index (never a scan of the state files)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate.formatting import human_duration
from wfstate.management.base import WFStateCommand
from wfstate.models import RunStatusChoices, WorkflowRun


class Command(WFStateCommand):
    help = "List workflow runs from the index, newest first."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--status", choices=RunStatusChoices.values, help="only this status")
        parser.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
        parser.add_argument(
            "--limit", type=int, default=50, help="at most this many runs (default 50; 0: all)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        runs = WorkflowRun.objects.all()
        if options["status"]:
            runs = runs.filter(status=options["status"])
        if options["workflow"]:
            runs = runs.filter(workflow_name=options["workflow"])
        limit = options["limit"]
        rows = list(runs[:limit] if limit and limit > 0 else runs)
        if self.as_json:
            self.emit_json({"count": len(rows), "runs": [_as_dict(r) for r in rows]})
            return
        if not rows:
            self.say("no runs")
            return
        self.say(
            f"{'RUN':<36}  {'WORKFLOW':<20} {'STATUS':<10} {'STATE':<18} {'STEPS':>7} "
            f"{'STARTED':<19} DURATION"
        )
        for r in rows:
            started = r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "-"
            self.say(
                f"{r.workflow_id:<36}  {r.workflow_name[:20]:<20} {r.status:<10} "
                f"{r.current_state[:18]:<18} {f'{r.steps_done}/{r.steps_total}':>7} "
                f"{started:<19} {human_duration(r.duration_ms)}"
            )


def _as_dict(r: WorkflowRun) -> dict[str, Any]:
    def iso(value: Any) -> str | None:
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "workflow_id": r.workflow_id,
        "workflow_name": r.workflow_name,
        "workflow_version": r.workflow_version,
        "status": r.status,
        "current_state": r.current_state or None,
        "started_at": iso(r.started_at),
        "updated_at": iso(r.updated_at),
        "completed_at": iso(r.completed_at),
        "duration_ms": r.duration_ms,
        "steps_done": r.steps_done,
        "steps_total": r.steps_total,
        "revision": r.revision,
        "error": r.error or None,
        "corrupt": r.corrupt,
    }
