from __future__ import annotations

from typing import Any

from wfstate.management.base import WFStateCommand
from wfstate.triggers import scheduler


class Command(WFStateCommand):
    help = (
        "Fire the due ticks of every enabled schedule once and exit (for a crontab entry; "
        "run_scheduler does this in a loop). Safe to run on several hosts at once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        result = scheduler.one_pass()
        if self.as_json:
            self.emit_json(
                {
                    "fired": [
                        {
                            "schedule": f.schedule,
                            "tick": f.tick.isoformat(),
                            "workflow_id": f.workflow_id,
                            "error": f.error or None,
                        }
                        for f in result.fired
                    ],
                    "repaired": result.repaired,
                    "woken": result.woken,
                }
            )
            return
        for fired in result.fired:
            what = f"error: {fired.error}" if fired.error else f"run {fired.workflow_id}"
            self.say(f"schedule {fired.schedule} tick {fired.tick.isoformat()}: {what}")
        if not result.fired:
            self.say("no tick due")
