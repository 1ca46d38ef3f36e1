from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate.management.base import WFStateCommand
from wfstate.triggers import scheduler


class Command(WFStateCommand):
    help = (
        "Start the runs of schedules as their ticks come, until SIGINT/SIGTERM. Run as "
        "many as you like on as many hosts: each tick starts exactly one run."
    )
    json_option = False

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="longest sleep between two looks at the schedules (default 1)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        def report(result: scheduler.PassResult) -> None:
            for fired in result.fired:
                what = f"error: {fired.error}" if fired.error else f"run {fired.workflow_id}"
                self.say(f"schedule {fired.schedule} tick {fired.tick.isoformat()}: {what}")

        self.say("scheduler started")
        with self.cancel_on_signals() as stop:
            scheduler.run_forever(interval=options["interval"], stop=stop, on_pass=report)
        self.say("scheduler stopped")
