from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import runs
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = "Resume every running or pending run that no live executor holds (crashed runs)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--detach",
            action="store_true",
            help="hand each run to a worker instead of running it here",
        )
        parser.add_argument(
            "--min-age",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="skip runs updated less than this long ago (e.g. just enqueued)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        outcomes: dict[str, str] = {}

        def report(workflow_id: str, outcome: str) -> None:
            outcomes[workflow_id] = outcome
            self.say(f"run {workflow_id}: {outcome}")

        runs.recover_runs(
            detach=options["detach"],
            min_age=options["min_age"],
            progress=self.progress,
            on_run=report,
        )
        if self.as_json:
            self.emit_json({"recovered": outcomes})
        elif not outcomes:
            self.say("no crashed run to recover")
