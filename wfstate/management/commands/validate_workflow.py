from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate.definitions import resolve_definition
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = "Validate a workflow definition (by name or path): every error, with file and line."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("name_or_path", help="a workflow name or a path to a YAML file")

    def handle(self, *args: Any, **options: Any) -> None:
        definition = resolve_definition(options["name_or_path"])
        if self.as_json:
            self.emit_json(
                {
                    "valid": True,
                    "name": definition.name,
                    "path": str(definition.path),
                    "sha256": definition.sha256,
                    "warnings": list(definition.warnings),
                }
            )
            return
        for warning in definition.warnings:
            self.stderr.write(self.style.WARNING(f"warning: {warning}"))
        self.stdout.write(
            self.style.SUCCESS(f"{definition.path}: workflow '{definition.name}' is valid")
            + (f" ({len(definition.warnings)} warnings)" if definition.warnings else "")
        )
