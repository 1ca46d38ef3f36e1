from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from wfstate import runs
from wfstate.exceptions import WFStateError
from wfstate.management.base import WFStateCommand, error_payload


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
        errors: dict[str, WFStateError] = {}

        def report(workflow_id: str, outcome: str) -> None:
            if workflow_id not in errors:
                outcomes[workflow_id] = outcome
            self.say(f"run {workflow_id}: {outcome}")

        def report_error(workflow_id: str, exc: WFStateError) -> None:
            errors[workflow_id] = exc
            outcomes.pop(workflow_id, None)

        runs.recover_runs(
            detach=options["detach"],
            min_age=options["min_age"],
            progress=self.progress,
            on_run=report,
            on_error=report_error,
        )
        if self.as_json:
            self.emit_json(
                {
                    "recovered": outcomes,
                    "errors": {wid: error_payload(exc) for wid, exc in errors.items()},
                }
            )
        elif not outcomes and not errors:
            self.say("no crashed run to recover")
        if errors:
            # Every other run was recovered; the exit code says some could not be
            # (the worst of their codes: 1 refused, 2 invalid definition, 4 system).
            raise CommandError(
                f"{len(errors)} run(s) could not be recovered: {', '.join(errors)}",
                returncode=max(exc.exit_code for exc in errors.values()),
            )
