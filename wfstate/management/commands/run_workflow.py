from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from django.core.management.base import CommandError, CommandParser

from wfstate import runs
from wfstate.definitions import parse_input_pairs
from wfstate.management.base import WFStateCommand, state_file
from wfstate.state import WorkflowState


class Command(WFStateCommand):
    help = "Start a run of a workflow, here (printing each step) or in the background (--detach)."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("name", help="the workflow's name")
        parser.add_argument(
            "--input",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an input (repeatable)",
        )
        parser.add_argument(
            "--inputs-file", type=Path, help="a JSON or YAML file of inputs (--input wins)"
        )
        parser.add_argument(
            "--detach",
            action="store_true",
            help="enqueue the run for a worker and print its id at once",
        )
        parser.add_argument(
            "--idempotency-key",
            metavar="KEY",
            help="start at most one run per key: a repeat prints the run the key started",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="validate the inputs and print the plan; write nothing, run nothing",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        inputs: dict[str, Any] = {}
        coerce = bool(options["input"])
        if options["inputs_file"]:
            inputs.update(_read_inputs_file(options["inputs_file"]))
        inputs.update(parse_input_pairs(options["input"]))
        if options["dry_run"]:
            plan = runs.plan_run(options["name"], inputs, coerce_strings=coerce)
            if self.as_json:
                self.emit_json(plan)
            else:
                from wfstate.engine.plan import format_plan

                self.stdout.write("dry run: nothing is written and nothing runs")
                for line in format_plan(plan):
                    self.stdout.write(line)
            return

        def created(state: WorkflowState) -> None:
            if not options["detach"]:
                self.say(f"run {state.workflow_id} of {state.workflow_name} started")

        with self.cancel_on_signals() as cancel_event:
            state = runs.start_run(
                options["name"],
                inputs,
                coerce_strings=coerce,
                detach=options["detach"],
                progress=self.progress,
                cancel_event=cancel_event,
                on_created=created,
                idempotency_key=options["idempotency_key"],
                started_by=_started_by(),
            )
        if options["detach"]:
            if self.as_json:
                self.emit_json(
                    {
                        "workflow_id": state.workflow_id,
                        "status": str(state.status),
                        "state_file": state_file(state.workflow_id),
                    }
                )
            else:
                self.stdout.write(state.workflow_id)
            return
        self.report_run(state, state_file(state.workflow_id))


def _started_by() -> dict[str, Any]:
    import getpass
    import os
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return {"kind": "command", "user": user, "host": socket.gethostname()}


def _read_inputs_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read inputs file {path}: {exc.strerror}", returncode=1) from exc
    try:
        data = orjson.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise CommandError(f"inputs file {path} is not valid: {exc}", returncode=1) from exc
    if not isinstance(data, dict):
        raise CommandError(f"inputs file {path} must hold a mapping of inputs", returncode=1)
    return data
