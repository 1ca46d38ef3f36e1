"""``sync_workflow_index``: rebuild the index from the state files (the file wins)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import CommandParser, OutputWrapper

from wfstate import index
from wfstate.management.base import WFStateCommand
from wfstate.stores import get_store


class ProgressBar:
    """``\\r``-rewritten progress line on a terminal (stderr), silent elsewhere."""

    def __init__(self, stream: OutputWrapper, label: str, enabled: bool) -> None:
        self.stream = stream
        self.label = label
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        width = 30
        filled = int(width * done / total) if total else width
        percent = 100 * done / total if total else 100
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done:,}/{total:,} {percent:3.0f}%",
            ending="",
        )
        self.stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self.stream.write("")


def progress_bar(command: WFStateCommand, label: str) -> ProgressBar:
    """A progress bar on the command's stderr when that is a terminal."""
    return ProgressBar(command.stderr, label, command.stderr.isatty() and command.verbosity > 0)


class Command(WFStateCommand):
    help = (
        "Rebuild the index of runs from the state files: the file always wins. Corrupt "
        "files are flagged, never fatal; --prune deletes rows whose file is gone."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--prune", action="store_true", help="delete index rows whose state file is gone"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        bar = progress_bar(self, "syncing")
        report = index.sync(get_store(), prune=options["prune"], progress=bar)
        bar.finish()
        if self.as_json:
            self.emit_json(report.as_dict())
            return
        self.say(
            f"{report.files} files: {report.created} rows created, {report.updated} updated, "
            f"{report.unchanged} unchanged ({report.seconds:.2f}s)"
        )
        for workflow_id, error in sorted(report.corrupt.items()):
            self.say(f"corrupt {workflow_id}: {error}", self.style.WARNING)
        if report.pruned:
            self.say(f"{report.pruned} rows without a file pruned")
        if report.stale_rows:
            self.say(
                f"{len(report.stale_rows)} rows have no file any more (--prune deletes them)",
                self.style.WARNING,
            )
