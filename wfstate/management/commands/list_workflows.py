from __future__ import annotations

from typing import Any

from wfstate.definitions import get_registry
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = "List the workflow definitions found in WORKFLOW_DIRS and apps' workflows/ folders."

    def handle(self, *args: Any, **options: Any) -> None:
        registry = get_registry()
        definitions = registry.all()
        errors = registry.errors()
        if self.as_json:
            self.emit_json(
                {
                    "workflows": [
                        {
                            "name": d.name,
                            "version": d.version,
                            "description": d.description,
                            "path": str(d.path),
                            "sha256": d.sha256,
                            "inputs": [i.name for i in d.inputs],
                            "warnings": list(d.warnings),
                        }
                        for d in definitions
                    ],
                    "invalid": [{"message": str(e), "errors": e.errors} for e in errors],
                }
            )
            return
        for d in definitions:
            self.stdout.write(f"{d.name:<24} {d.version:<10} {d.description}  ({d.path})")
        for e in errors:
            self.stderr.write(self.style.ERROR(f"invalid: {e}"))
        if not definitions and not errors:
            self.stdout.write("no workflow definitions found")
