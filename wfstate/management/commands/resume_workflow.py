from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import runs
from wfstate.definitions import parse_input_pairs
from wfstate.management.base import WFStateCommand, state_file


class Command(WFStateCommand):
    help = "Resume a crashed, failed or cancelled run (or re-run a completed one with --from)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("workflow_id", help="the run's id")
        parser.add_argument(
            "--from",
            dest="from_state",
            default="current",
            metavar="current|previous|STATE",
            help="where to go on from: the step in flight (default), the last completed one, "
            "or any executed state",
        )
        parser.add_argument(
            "--input", action="append", default=[], metavar="KEY=VALUE", help="override an input"
        )
        parser.add_argument(
            "--allow-changed-definition",
            action="store_true",
            help="resume even though the workflow file changed since the run began",
        )
        parser.add_argument(
            "--detach", action="store_true", help="rewind here, execute in a worker"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workflow_id = options["workflow_id"]
        with self.cancel_on_signals() as cancel_event:
            state = runs.resume_run(
                workflow_id,
                from_state=options["from_state"],
                inputs=parse_input_pairs(options["input"]),
                coerce_strings=True,
                allow_changed_definition=options["allow_changed_definition"],
                detach=options["detach"],
                progress=self.progress,
                cancel_event=cancel_event,
            )
        if options["detach"]:
            if self.as_json:
                self.emit_json({"workflow_id": workflow_id, "status": str(state.status)})
            else:
                self.stdout.write(
                    f"run {workflow_id} handed to a worker from '{state.current_state}'"
                )
            return
        self.report_run(state, state_file(workflow_id))
