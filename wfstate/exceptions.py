"""One hierarchy of errors, rooted at :class:`WFStateError`.

Each class has a stable ``code`` (like DRF's ``default_code``) that the API returns and
scripts can rely on, and an ``exit_code`` that management commands exit with
(README.md, "Commands").
Each also inherits the builtin it resembles, so ``except LookupError`` keeps working.
HTTP statuses are mapped in one place, ``wfstate.api.exceptions``.

Errors are picklable (they cross process boundaries in spawned workers): extra
attributes travel through ``__reduce__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wfstate.records import DefinitionProblem, ErrorDict, RunLockOwner


class WFStateError(Exception):
    code = "wfstate_error"
    exit_code = 4

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message)
        self.message = message
        for key, value in details.items():
            setattr(self, key, value)
        self._details = details

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self._details))

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> ErrorDict:
        """The error as JSON: what the API answers (``wfstate.api.exceptions``) and the
        commands print with ``--json``. Subclasses add their own fields."""
        return {"code": self.code, "detail": self.message or self.code}


def _rebuild(cls: type[WFStateError], message: str, details: dict[str, Any]) -> WFStateError:
    return cls(message, **details)


class ConfigurationError(WFStateError, ValueError):
    """A ``WFSTATE`` setting has a wrong type or value, or names what cannot be imported.

    ``setting`` names it (e.g. ``"LOCK_TIMEOUT"``). ``manage.py check`` reports the same
    problems before anything runs (``wfstate.E006``, ``E002``, ``E003``).
    """

    code = "configuration_error"

    def __init__(self, message: str = "", *, setting: str = "", **details: Any) -> None:
        super().__init__(message, setting=setting, **details)
        self.setting = setting

    def as_dict(self) -> ErrorDict:
        body = super().as_dict()
        body["setting"] = self.setting
        return body


# --- user errors (exit 1) -------------------------------------------------------------


class RunNotFound(WFStateError, LookupError):
    code = "run_not_found"
    exit_code = 1


class InvalidRunId(RunNotFound, ValueError):
    """A run id that is not a UUID4 string: refused before any path is built."""

    code = "invalid_run_id"


class WorkflowNotFound(WFStateError, LookupError):
    code = "workflow_not_found"
    exit_code = 1


class InvalidInputs(WFStateError, ValueError):
    """Inputs failed validation. ``errors`` maps each input name to its messages."""

    code = "invalid_inputs"
    exit_code = 1

    def __init__(
        self, message: str = "", *, errors: dict[str, list[str]] | None = None, **details: Any
    ) -> None:
        super().__init__(message, errors=errors or {}, **details)
        self.errors: dict[str, list[str]] = errors or {}

    def as_dict(self) -> ErrorDict:
        body = super().as_dict()
        body["errors"] = self.errors
        return body


class NotResumable(WFStateError):
    """The run cannot be resumed as asked (completed without --from, unknown state...)."""

    code = "not_resumable"
    exit_code = 1


class DefinitionChanged(NotResumable):
    code = "definition_changed"


class RunFinished(WFStateError):
    """The run already ended (e.g. cancelling a completed run)."""

    code = "run_finished"
    exit_code = 1


class StillRunning(WFStateError):
    """The run has a live executor (e.g. deleting a running run)."""

    code = "still_running"
    exit_code = 1


class InvalidSignal(WFStateError, ValueError):
    """A signal's payload fails the wait step's schema (or is not JSON). Nothing changed."""

    code = "invalid_signal"
    exit_code = 1


class SignalRefused(WFStateError):
    """Nothing can take the signal: the run ended, or no wait step for it lies ahead."""

    code = "signal_refused"
    exit_code = 1


# --- invalid definitions (exit 2) -----------------------------------------------------


class InvalidDefinition(WFStateError, ValueError):
    """A workflow file failed schema or semantic validation.

    ``errors`` lists every problem (``{"file", "line", "state", "message"}``), not only
    the first; ``warnings`` what loaded but is ignored; ``path`` the file.
    """

    code = "invalid_definition"
    exit_code = 2

    def __init__(
        self,
        message: str = "",
        *,
        errors: list[DefinitionProblem] | None = None,
        warnings: list[str] | None = None,
        path: str = "",
        workflow_name: str | None = None,
        **details: Any,
    ) -> None:
        super().__init__(
            message,
            errors=errors or [],
            warnings=warnings or [],
            path=path,
            workflow_name=workflow_name,
            **details,
        )
        self.errors: list[DefinitionProblem] = errors or []
        self.warnings: list[str] = warnings or []
        self.path = path  # the definition file
        self.workflow_name = workflow_name  # its declared name, when it has one

    def as_dict(self) -> ErrorDict:
        body = super().as_dict()
        body["errors"] = self.errors
        return body


class TemplateError(WFStateError, ValueError):
    """A template failed to render (undefined name, sandbox violation, syntax)."""

    code = "template_error"
    exit_code = 2


# --- system errors (exit 4) -----------------------------------------------------------


class StorageError(WFStateError, OSError):
    """Reading or writing a state file failed; the previous file is intact."""

    code = "storage_error"


class DiskFull(StorageError):
    code = "disk_full"


class StateTooLarge(StorageError):
    """A state larger than the store's ``max_bytes``: refused before anything is
    written, since the store would refuse to read it back. ``size`` and ``limit`` say by
    how much."""

    code = "state_too_large"
    size: int
    limit: int


class StateLocked(WFStateError, TimeoutError):
    """A write lock could not be had within ``LOCK_TIMEOUT``."""

    code = "state_locked"


class RunLocked(StateLocked):
    """Another executor holds the run lock. ``owner`` says who (pid, host, since)."""

    code = "run_locked"

    def __init__(
        self, message: str = "", *, owner: RunLockOwner | None = None, **details: Any
    ) -> None:
        super().__init__(message, owner=owner, **details)
        self.owner: RunLockOwner | None = owner

    def as_dict(self) -> ErrorDict:
        body = super().as_dict()
        body["owner"] = self.owner
        return body


class CorruptState(WFStateError, ValueError):
    """A state file exists but is not a valid state document. ``path`` names it."""

    code = "corrupt_state"

    def __init__(self, message: str = "", *, path: str = "", **details: Any) -> None:
        super().__init__(message, path=path, **details)
        self.path = path

    def as_dict(self) -> ErrorDict:
        body = super().as_dict()
        body["path"] = self.path
        return body


class IdempotencyConflict(WFStateError):
    """An idempotency key already started a run of this workflow with other inputs."""

    code = "idempotency_conflict"
    exit_code = 1
