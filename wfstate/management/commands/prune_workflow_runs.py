"""``prune_workflow_runs``: remove finished runs older than a retention policy.

``--older-than 30d [--status completed,cancelled] [--workflow NAME]`` gives the policy
on the command line; without ``--older-than`` the ``RETENTION`` setting does. Never a
pending, running or waiting run, never one whose run lock is held; each candidate from
the index is confirmed from its file. ``wfstate.retention`` says why a kill midway
leaves nothing that ``doctor --fix`` cannot finish.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import retention
from wfstate.conf import conf
from wfstate.management.base import WFStateCommand
from wfstate.management.commands.sync_workflow_index import progress_bar

SHOWN = 20


class Command(WFStateCommand):
    help = (
        "Remove finished runs (file, side files, sidecars, index row) older than "
        "--older-than or the RETENTION setting. Running and waiting runs are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--older-than",
            metavar="DURATION",
            help="prune runs that ended longer ago than this (30d, 12h, 2w...); "
            "default: the RETENTION setting",
        )
        parser.add_argument(
            "--status",
            metavar="S[,S...]",
            help="with --older-than: which final statuses "
            f"(default: {','.join(retention.PRUNABLE)})",
        )
        parser.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be pruned, change nothing"
        )
        parser.add_argument(
            "--archive",
            metavar="DIR",
            help="first write each run to DIR/<id>.tar.gz (a bundle import_workflow_run reads)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        statuses = [s.strip() for s in (options["status"] or "").split(",") if s.strip()]
        if options["older_than"]:
            policy = retention.Policy.from_options(
                options["older_than"], statuses or None, options["workflow"]
            )
        else:
            if statuses:
                raise retention.InvalidRetention("--status needs --older-than")
            policy = retention.Policy.from_setting(conf.RETENTION)
            if options["workflow"]:
                policy = retention.Policy(
                    policy.default, policy.workflows, only_workflow=options["workflow"]
                )
        bar = progress_bar(self, "pruning")
        report = retention.prune(
            policy, dry_run=options["dry_run"], archive_dir=options["archive"], progress=bar
        )
        bar.finish()
        if self.as_json:
            self.emit_json(report.as_dict())
            return
        verb = "would prune" if report.dry_run else "pruned"
        self.say(
            f"{report.candidates} candidates in the index: {verb} {len(report.pruned)}, "
            f"kept {len(report.skipped)} ({report.seconds:.2f}s)"
        )
        limit = None if self.verbosity >= 2 else SHOWN
        if report.dry_run:
            for workflow_id in report.pruned[:limit]:
                self.say(f"  {workflow_id}")
        for workflow_id, reason in list(report.skipped.items())[:limit]:
            self.say(f"kept {workflow_id}: {reason}")
        if report.archived:
            self.say(f"{len(report.archived)} runs archived first")
        if report.rows_without_file:
            verb = "would remove" if report.dry_run else "removed"
            self.say(f"{verb} {len(report.rows_without_file)} index rows whose file was gone")
        for workflow_id, error in report.errors.items():
            self.say(f"error on {workflow_id}: {error}", self.style.ERROR)
