from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from wfstate import runs
from wfstate.management.base import WFStateCommand, state_file
from wfstate.stores.locks import describe_owner


class Command(WFStateCommand):
    help = "Show a run's state, read from its state file."

    def add_arguments(self, parser: CommandParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("workflow_id", help="the run's id")

    def handle(self, *args: Any, **options: Any) -> None:
        workflow_id = options["workflow_id"]
        state = runs.load_run(workflow_id)
        owner = runs.run_owner(workflow_id)
        if self.as_json:
            payload = state.to_dict()
            payload["state_file"] = state_file(workflow_id)
            payload["locked_by"] = owner
            self.emit_json(payload)
            return
        w = self.stdout.write
        w(f"run       {state.workflow_id}")
        w(f"workflow  {state.workflow_name} {state.workflow_version}".rstrip())
        w(f"status    {state.status}" + (f": {state.error}" if state.error else ""))
        w(f"current   {state.current_state or '-'}")
        w(f"started   {state.started_at}")
        w(f"updated   {state.updated_at}  (revision {state.revision})")
        if state.completed_at:
            w(f"completed {state.completed_at}")
        if state.waiting_for:
            waiting = state.waiting_for
            what = f"signal '{waiting.get('signal')}'" if waiting.get("signal") else "its time"
            until = f" until {waiting['until']}" if waiting.get("until") else ""
            w(f"waiting   for {what} at '{waiting.get('state')}'{until}")
        if owner:
            w(f"locked by {describe_owner(owner)}")
        w(f"file      {state_file(workflow_id)}")
        if state.states:
            w("steps:")
            for step in state.states.values():
                seconds = f"{step.duration_ms / 1000:.2f}s" if step.duration_ms is not None else "-"
                extra = f"  {step.error}" if step.error else ""
                attempt = f"attempt {step.attempt}"
                w(f"  {step.name:<24} {step.status:<10} {seconds:>8}  {attempt}{extra}")
