from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import CommandError, CommandParser

from wfstate.definitions import resolve_definition
from wfstate.exceptions import InvalidDefinition
from wfstate.management.base import WFStateCommand, error_payload


class Command(WFStateCommand):
    help = (
        "Validate a workflow definition (by name or path): every error, with file and line. "
        "Exits 2 when it is invalid."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("name_or_path", help="a workflow name or a path to a YAML file")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            definition = resolve_definition(options["name_or_path"])
        except InvalidDefinition as exc:
            if not self.as_json:
                raise
            path = exc.path or options["name_or_path"]
            self.emit_json(
                {
                    "valid": False,
                    "name": exc.workflow_name or Path(path).stem,
                    "path": path,
                    "errors": exc.errors,
                    "warnings": exc.warnings,
                    "error": error_payload(exc),
                }
            )
            raise CommandError(str(exc), returncode=exc.exit_code) from exc
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
