"""``doctor``: report (and with ``--fix`` repair) what drifted between files and index.

Problems: rows that disagree with their file (revision, status...), files without a
row, rows without a file, corrupt state files, temp files left by interrupted writes,
side files (outputs, lock sidecars) of runs whose state file is gone (what a kill in the
middle of a delete or a prune leaves; ``wfstate.retention.orphan_side_files``).
``--fix`` re-syncs the index from the files and prunes rows without files, deletes the
orphan temp files (``store.sweep()``, each under its run's write lock) and moves
corrupt files to ``<STORAGE_DIR>/quarantine/`` (never deleting them).

Runs left ``running`` with no live executor (crashed) are reported too; they are
``recover_workflows``' business, not the doctor's, and do not count as problems.

Exits 1 when problems remain (always without ``--fix`` if any were found).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from wfstate import index, retention
from wfstate.management.base import WFStateCommand
from wfstate.management.commands.sync_workflow_index import progress_bar
from wfstate.models import WorkflowRun
from wfstate.stores import StateStore, get_store

SHOWN = 20  # problems listed per kind (all with -v 2)


class Command(WFStateCommand):
    help = (
        "Check the state files against the index: drift, files without rows, rows without "
        "files, corrupt files, orphan temp files. --fix repairs what it can."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--fix",
            action="store_true",
            help="re-sync drifted rows, prune rows without files, delete orphan temp files, "
            "move corrupt files to quarantine",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        store = get_store()
        bar = progress_bar(self, "checking")
        report = index.inspect(store, progress=bar)
        bar.finish()
        temp_files = [str(p) for p in store.temp_files()]
        crashed = self._crashed(store)
        orphans = retention.orphan_side_files(store)
        found = {
            "drifted": len(report.drifted),
            "missing_rows": len(report.missing_rows),
            "stale_rows": len(report.stale_rows),
            "corrupt": len(report.corrupt),
            "temp_files": len(temp_files),
            "orphan_side_files": len(orphans),
        }
        result: dict[str, Any] = {
            "files": report.files,
            "problems": sum(found.values()),
            "found": found,
            **{k: v for k, v in report.as_dict().items() if k in found},
            "temp_files": temp_files,
            "orphan_side_files": orphans,
            "crashed_runs": crashed,
        }
        remaining = result["problems"]
        if options["fix"]:
            fixed = self._fix(store, report, temp_files)
            result["fixed"] = fixed
            remaining = fixed.pop("remaining")
        result["remaining"] = remaining
        result["ok"] = remaining == 0

        if self.as_json:
            self.emit_json(result)
        else:
            self._print(result, fix=options["fix"])
        if remaining:
            hint = "" if options["fix"] else "; `doctor --fix` repairs them"
            raise CommandError(f"{remaining} problem(s) remain{hint}", returncode=1)

    # --- checks and fixes -------------------------------------------------------------

    @staticmethod
    def _crashed(store: StateStore) -> list[str]:
        """Rows that say running whose run lock nobody holds (crashed executors)."""
        crashed = []
        for workflow_id in WorkflowRun.objects.filter(status="running").values_list(
            "workflow_id", flat=True
        ):
            try:
                if store.run_lock_owner(workflow_id) is None:
                    crashed.append(workflow_id)
            except Exception:  # noqa: S112 - an odd id: sync reports it
                continue
        return crashed

    def _fix(
        self, store: StateStore, report: index.SyncReport, temp_files: list[str]
    ) -> dict[str, Any]:
        quarantined: dict[str, str] = {}
        for workflow_id in sorted(report.corrupt):
            try:
                moved = store.quarantine(workflow_id)
            except Exception as exc:  # reported, the rest goes on
                self.stderr.write(f"could not quarantine {workflow_id}: {exc}")
                continue
            if moved:
                quarantined[workflow_id] = moved
        swept = store.sweep() if temp_files else []
        bar = progress_bar(self, "re-syncing")
        synced = index.sync(store, prune=True, progress=bar)
        bar.finish()
        orphans_removed = retention.remove_orphan_side_files(store)
        left_orphans = retention.orphan_side_files(store)
        left_temp = [str(p) for p in store.temp_files()]
        left_corrupt = [w for w in synced.corrupt if w not in quarantined]
        return {
            "quarantined": quarantined,
            "temp_files_removed": swept,
            "rows_created": synced.created,
            "rows_updated": synced.updated,
            "rows_pruned": synced.pruned,
            "orphan_side_files_removed": orphans_removed,
            "remaining": len(left_temp) + len(left_corrupt) + len(left_orphans),
        }

    # --- output --------------------------------------------------------------------------

    def _print(self, result: dict[str, Any], *, fix: bool) -> None:
        limit = None if self.verbosity >= 2 else SHOWN

        def listing(title: str, items: list[str]) -> None:
            if not items:
                return
            self.say(f"{title}: {len(items)}", self.style.WARNING)
            for item in items[:limit]:
                self.say(f"  {item}")
            if limit is not None and len(items) > limit:
                self.say(f"  ... and {len(items) - limit} more (-v 2 lists all)")

        self.say(f"{result['files']} state files checked")
        listing(
            "rows that disagree with their file",
            [
                f"{d['workflow_id']}: "
                + ", ".join(
                    f"{k} row={v['row']!r} file={v['file']!r}"
                    for k, v in d.items()
                    if isinstance(v, dict)
                )
                or d["workflow_id"]
                for d in result["drifted"]
            ],
        )
        listing("files without an index row", result["missing_rows"])
        listing("index rows without a file", result["stale_rows"])
        listing(
            "corrupt state files", [f"{c['workflow_id']}: {c['error']}" for c in result["corrupt"]]
        )
        listing("orphan temp files", result["temp_files"])
        listing(
            "side files of runs without a state file",
            [f"{w}: {', '.join(p)}" for w, p in result["orphan_side_files"].items()],
        )
        if result["crashed_runs"]:
            listing(
                "running runs with no live executor (recover_workflows resumes them)",
                result["crashed_runs"],
            )
        if fix:
            fixed = result["fixed"]
            self.say(
                f"fixed: {len(fixed['quarantined'])} corrupt files quarantined, "
                f"{len(fixed['temp_files_removed'])} temp files removed, "
                f"{fixed['rows_created']} rows created, {fixed['rows_updated']} updated, "
                f"{fixed['rows_pruned']} pruned, side files of "
                f"{len(fixed['orphan_side_files_removed'])} deleted runs removed"
            )
        if result["remaining"] == 0:
            self.say("no problems" if not fix else "all fixed", self.style.SUCCESS)
