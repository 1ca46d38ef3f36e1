from __future__ import annotations

import getpass
from typing import Any

import orjson
from django.core.management.base import CommandError, CommandParser

from wfstate import runs
from wfstate.management.base import WFStateCommand


class Command(WFStateCommand):
    help = (
        "Send a signal (with a JSON payload) to a run: a run waiting for it is woken at once "
        "through the task backend; a run not yet at its wait step takes it when it gets there."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("workflow_id", help="the run's id")
        parser.add_argument("signal", help="the signal's name (a wait step's 'signal:')")
        parser.add_argument(
            "--payload",
            default="{}",
            help="the payload, as JSON (default: {}); checked against the wait step's schema",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            payload = orjson.loads(options["payload"])
        except orjson.JSONDecodeError as exc:
            raise CommandError(f"--payload is not valid JSON: {exc}", returncode=1) from None
        try:
            user = getpass.getuser()
        except (KeyError, OSError):  # no name for this uid (a container)
            user = None
        record, state = runs.signal_run(
            options["workflow_id"],
            options["signal"],
            payload,
            sender={"kind": "command", "user": user},
        )
        if self.as_json:
            self.emit_json(
                {"workflow_id": state.workflow_id, "status": str(state.status), **record}
            )
        else:
            self.stdout.write(
                f"run {state.workflow_id}: signal '{record['signal']}' accepted (id {record['id']})"
            )
