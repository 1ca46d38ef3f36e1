"""``import_workflow_run FILE``: bring a bundle's run into this storage directory."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import bundles
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = (
        "Import a run bundle written by export_workflow_run: checked member by member, "
        "written beside the other runs and indexed; it can then be resumed here."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("bundle", help="the .tar.gz file")
        parser.add_argument(
            "--replace", action="store_true", help="overwrite a run with the same id"
        )
        parser.add_argument(
            "--install-definition",
            metavar="DIR",
            help="write the bundled definition into DIR when the workflow is unknown here",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        result = bundles.import_run(
            options["bundle"],
            replace=options["replace"],
            install_definition=options["install_definition"],
        )
        for warning in result.warnings:
            self.stderr.write(f"warning: {warning}")
        if self.as_json:
            self.emit_json(
                {
                    "workflow_id": result.workflow_id,
                    "workflow_name": result.workflow_name,
                    "status": result.status,
                    "definition": result.definition,
                    "warnings": result.warnings,
                }
            )
            return
        self.say(
            f"run {result.workflow_id} ({result.workflow_name}, {result.status}) imported; "
            f"definition: {result.definition}"
        )
