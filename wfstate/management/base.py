"""What every wfstate command shares: ``--json``, exit codes, signals, progress lines.

Exit codes (README.md, "Commands"): 0 success; 1 user error; 2 invalid definition; 3 the run ended
failed or cancelled; 4 system error. Each ``WFStateError`` carries its ``exit_code``,
so the mapping lives in the exception classes and one ``except`` here.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError, CommandParser

from wfstate.engine.events import ProgressEvent
from wfstate.exceptions import WFStateError
from wfstate.state import RunStatus, WorkflowState

EXIT_RUN_FAILED = 3


def error_payload(exc: WFStateError) -> dict[str, Any]:
    """The error's JSON (``WFStateError.as_dict()``, as the API's) for ``--json``, plus
    ``message``: the same text as ``detail``, the key scripts of earlier versions read."""
    payload: dict[str, Any] = dict(exc.as_dict())
    payload["message"] = str(exc)
    return payload


class WFStateCommand(BaseCommand):
    json_option = True

    def add_arguments(self, parser: CommandParser) -> None:
        if self.json_option:
            parser.add_argument(
                "--json", action="store_true", help="print one JSON object on stdout, nothing else"
            )

    def execute(self, *args: Any, **options: Any) -> Any:
        self.as_json = bool(options.get("json"))
        self.verbosity = int(options.get("verbosity", 1))
        from wfstate import audit

        try:
            # What the command changes is recorded as done by this host's OS user.
            with audit.acting_as(audit.command_actor):
                return super().execute(*args, **options)
        except WFStateError as exc:
            if self.as_json:
                self.emit_json({"error": error_payload(exc)})
            raise CommandError(str(exc), returncode=exc.exit_code) from exc

    # --- output ----------------------------------------------------------------------------

    def emit_json(self, data: Any) -> None:
        self.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())

    def say(self, message: str = "", style: Any = None) -> None:
        """A human line (never printed with --json)."""
        if not self.as_json and self.verbosity > 0:
            self.stdout.write(style(message) if style else message)

    def on_terminal(self) -> bool:
        isatty = getattr(self.stdout, "isatty", None)
        return bool(isatty and isatty())

    def progress(self, event: ProgressEvent) -> None:
        """One line per step start and end: state, status, duration, attempt."""
        if self.as_json or self.verbosity == 0:
            return
        if not (self.on_terminal() or self.verbosity >= 2):
            return
        kind = event.get("event")
        name = event.get("state", "")
        attempt = event.get("attempt", 1)
        if kind == "step_started":
            self.stdout.write(f"  ▸ {name}  (attempt {attempt})")
        elif kind == "step_retry":
            self.stdout.write(
                self.style.WARNING(
                    f"  ↻ {name}  attempt {attempt} failed: {event.get('error')}; "
                    f"retrying in {event.get('delay', 0):.2f}s"
                )
            )
        elif kind == "step_kept":
            self.stdout.write(f"  = {name}  kept: completed before the resume (attempt {attempt})")
        elif kind == "iteration_finished":
            self.stdout.write(f"  ⟳ {name}  iteration {event.get('index')} {event.get('status')}")
        elif kind == "step_finished":
            status = event.get("status")
            seconds = (event.get("duration_ms") or 0) / 1000
            mark = "✓" if status == "completed" else "✗"
            line = f"  {mark} {name}  {status}  {seconds:.2f}s  (attempt {attempt})"
            if event.get("error") and status != "completed":
                line += f"  {event['error']}"
            style = self.style.SUCCESS if status == "completed" else self.style.ERROR
            self.stdout.write(style(line))
        elif kind == "hook":
            # A hook's own lines (a command's stdout, a log message), in the order run.
            where = f"{name} {event.get('hook')}" if name else str(event.get("hook"))
            text = event.get("output") if event.get("status") == "completed" else event.get("error")
            for text_line in str(text or "").splitlines() or [""]:
                line = f"  ⚓ {where}: {text_line}"
                if event.get("status") == "completed":
                    self.stdout.write(line)
                else:
                    self.stdout.write(self.style.WARNING(line))

    def report_run(self, state: WorkflowState, path: str | None) -> None:
        """The closing lines of run/resume: id, status, state file; exit 3 when not completed."""
        if self.as_json:
            payload = state.to_dict()
            payload["state_file"] = path
            self.emit_json(payload)
        else:
            style = self.style.SUCCESS if state.status == RunStatus.COMPLETED else self.style.ERROR
            self.say(f"run {state.workflow_id}")
            self.say(f"status {state.status}" + (f": {state.error}" if state.error else ""), style)
            if state.status == RunStatus.WAITING and state.waiting_for:
                waiting = state.waiting_for
                what = f"signal '{waiting.get('signal')}'" if waiting.get("signal") else "its time"
                until = f" (until {waiting['until']})" if waiting.get("until") else ""
                self.say(f"waiting for {what} at '{waiting.get('state')}'{until}")
            if path:
                self.say(f"state file {path}")
        if state.status in (RunStatus.FAILED, RunStatus.CANCELLED):
            raise CommandError(
                f"run {state.workflow_id} ended {state.status}"
                + (f" at '{state.current_state}': {state.error}" if state.error else ""),
                returncode=EXIT_RUN_FAILED,
            )

    @contextlib.contextmanager
    def cancel_on_signals(self) -> Iterator[threading.Event]:
        """SIGINT/SIGTERM cancel the run being executed (the step's group is killed)."""
        event = threading.Event()
        if threading.current_thread() is not threading.main_thread():
            yield event
            return

        def handler(signum: int, frame: Any) -> None:
            event.set()
            sys.stderr.write(f"\nreceived {signal.Signals(signum).name}: cancelling the run\n")

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield event
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


def state_file(workflow_id: str) -> str | None:
    from wfstate.stores import get_store

    path = get_store().path_for(workflow_id)
    return str(path) if path is not None else None
