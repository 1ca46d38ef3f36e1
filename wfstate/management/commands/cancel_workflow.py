from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import runs
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = "Cancel a run: its executor kills the running step and records it cancelled."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("workflow_id", help="the run's id")

    def handle(self, *args: Any, **options: Any) -> None:
        outcome, state = runs.cancel_run(options["workflow_id"])
        if self.as_json:
            self.emit_json(
                {"workflow_id": state.workflow_id, "outcome": outcome, "status": str(state.status)}
            )
        elif outcome == "requested":
            self.stdout.write(
                f"run {state.workflow_id}: cancellation requested; its executor stops "
                f"'{state.current_state}' and records it cancelled"
            )
        else:
            self.stdout.write(f"run {state.workflow_id} cancelled (no executor was running it)")
