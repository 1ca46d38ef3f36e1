"""``export_workflow_run ID -o FILE``: one run in a ``.tar.gz`` bundle (wfstate.bundles)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import bundles
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = (
        "Write a run (state with its history, whole outputs, the definition it ran) to a "
        ".tar.gz bundle that import_workflow_run reads on another host."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("workflow_id", help="the run's id")
        parser.add_argument("-o", "--output", required=True, metavar="FILE", help="the bundle")

    def handle(self, *args: Any, **options: Any) -> None:
        result = bundles.export_run(options["workflow_id"], options["output"])
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        if self.as_json:
            self.emit_json(
                {"path": result.path, "warnings": result.warnings, "manifest": result.manifest}
            )
            return
        self.say(
            f"run {result.workflow_id} ({result.manifest['status']}, revision "
            f"{result.manifest['revision']}) exported to {result.path}"
        )
