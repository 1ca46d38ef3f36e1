from __future__ import annotations

from typing import Any

from wfstate.definitions import get_registry
from wfstate.definitions.registry import WorkflowEntry
from wfstate.management.base import WFStateCommand


def entry_payload(entry: WorkflowEntry) -> dict[str, Any]:
    """One workflow of ``--json``: valid or not, with every error of an invalid one."""
    return {
        "name": entry.name,
        "valid": entry.valid,
        "version": entry.version,
        "description": entry.description,
        "path": str(entry.path),
        "paths": [str(p) for p in entry.paths],
        "sha256": entry.sha256,
        "inputs": [i.name for i in entry.inputs],
        "warnings": entry.warnings,
        "errors": entry.errors,
    }


class Command(WFStateCommand):
    help = (
        "List the workflow definitions found in WORKFLOW_DIRS and apps' workflows/ folders, "
        "invalid ones too (with their errors). Exits 0 even when some are invalid."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        entries = get_registry().entries()
        if self.as_json:
            self.emit_json(
                {
                    "workflows": [entry_payload(e) for e in entries],
                    # Kept for scripts written against the first format.
                    "invalid": [
                        {"name": e.name, "message": str(e.error), "errors": e.errors}
                        for e in entries
                        if e.error is not None
                    ],
                }
            )
            return
        for e in entries:
            if e.valid:
                self.stdout.write(f"{e.name:<24} {e.version:<10} {e.description}  ({e.path})")
                continue
            count = len(e.errors)
            self.stdout.write(
                self.style.ERROR(
                    f"{e.name:<24} INVALID    {count} error{'s' * (count != 1)}  ({e.path})"
                )
            )
            if self.verbosity > 0:
                for line in str(e.error).splitlines():
                    self.stdout.write(f"    {line}")
        if not entries:
            self.stdout.write("no workflow definitions found")
