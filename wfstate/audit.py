"""The audit trail: who changed a run, through which channel, when and from where.

Every face says who acts before it calls the service layer (``acting_as``); the
service layer writes ``actor()`` into the run's ``history`` in the same write as the
change itself, so the record can never be missing from a change that happened. An
actor is a small JSON object::

    {"kind": "user", "channel": "admin", "user_id": 3, "username": "ada", "ip": "10.0.0.7",
     "by": "user ada (id 3) through the admin from 10.0.0.7"}
    {"kind": "command", "channel": "command", "host": "web-2", "os_user": "deploy",
     "pid": 4121, "by": "command on host web-2 by OS user deploy"}

``kind`` is ``user``, ``api_key`` (an API client authenticated by a token rather than
a session), ``command``, ``schedule`` or ``system`` (nobody said: a library call);
``channel`` is ``admin``, ``api``, ``command``, ``schedule`` or ``library``. ``by`` is
the sentence the admin shows.

The actor lives in a ``ContextVar``: per thread and per asyncio task, so concurrent
requests never see each other's, and it is always reset when the face is done.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from wfstate.state import utcnow

Actor = dict[str, Any]

_current: ContextVar[Callable[[], Actor] | Actor | None] = ContextVar("wfstate_actor", default=None)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return str(os.getuid())


def command_actor() -> Actor:
    """The actor of a management command: this host, this OS user."""
    host, user = socket.gethostname(), _os_user()
    return {
        "kind": "command",
        "channel": "command",
        "host": host,
        "os_user": user,
        "pid": os.getpid(),
        "by": f"command on host {host} by OS user {user}",
    }


def schedule_actor(schedule: str) -> Actor:
    """The actor of a run started or acted on by a schedule."""
    return {
        "kind": "schedule",
        "channel": "schedule",
        "schedule": schedule,
        "by": f"schedule {schedule}",
    }


def client_ip(request: Any) -> str | None:
    """The peer's address (``REMOTE_ADDR``: a proxy in front sets it, see docs)."""
    meta = getattr(request, "META", None) or {}
    return meta.get("REMOTE_ADDR") or None


def request_actor(request: Any, channel: str) -> Actor:
    """The actor of an HTTP request (admin or API): its user, or its API key, and IP."""
    user = getattr(request, "user", None)
    ip = client_ip(request)
    where = f" from {ip}" if ip else ""
    auth = getattr(request, "auth", None)
    if user is not None and getattr(user, "is_authenticated", False):
        actor: Actor = {
            "kind": "api_key" if auth is not None and not isinstance(auth, dict) else "user",
            "channel": channel,
            "user_id": user.pk,
            "username": user.get_username(),
            "ip": ip,
        }
        via = "API key of user" if actor["kind"] == "api_key" else "user"
        actor["by"] = f"{via} {actor['username']} (id {user.pk}) through the {channel}{where}"
        return actor
    return {
        "kind": "anonymous",
        "channel": channel,
        "ip": ip,
        "by": f"anonymous through the {channel}{where}",
    }


@contextlib.contextmanager
def acting_as(actor: Actor | Callable[[], Actor]) -> Iterator[None]:
    """Say who acts for the calls made inside (a callable is resolved on first use,
    so a request's user is only looked up when something is recorded)."""
    token = _current.set(actor)
    try:
        yield
    finally:
        _current.reset(token)


def actor() -> Actor:
    """Who acts now (``system`` through the library when no face said)."""
    current = _current.get()
    if current is None:
        host = socket.gethostname()
        return {
            "kind": "system",
            "channel": "library",
            "host": host,
            "pid": os.getpid(),
            "by": f"library call on host {host}",
        }
    if callable(current):
        resolved = current()
        _current.set(resolved)
        return resolved
    return current


def entry(action: str, **details: Any) -> dict[str, Any]:
    """A history entry for ``action`` by the current actor."""
    return {"event": action, "at": utcnow(), "actor": actor(), **details}


# --- a cancel request to a live executor ---------------------------------------------------
#
# The executor owns the run's state while it runs (its next checkpoint would overwrite a
# history entry written beside it), so who asked for the cancel is noted in a side file
# of the run, ``<id>.outputs/.cancel-request``, and recorded in the history by
# ``runs.execute`` once the executor has stopped, still under the run lock.

_NOTE = ".cancel-request"


def _note_path(store: Any, workflow_id: str) -> Any:

    directory = store.outputs_dir(workflow_id)
    return directory / _NOTE if directory is not None else None


def note_cancel_request(store: Any, workflow_id: str) -> None:
    """Keep who asks a live executor to cancel (never fatal: the cancel matters more)."""
    import orjson

    path = _note_path(store, workflow_id)
    if path is None or path.parent.is_symlink():
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(entry("cancel", requested=True)))


def take_cancel_request(store: Any, workflow_id: str) -> dict[str, Any] | None:
    """The noted cancel request, removed (None when there is none or it is unreadable)."""
    import orjson

    path = _note_path(store, workflow_id)
    if path is None or path.parent.is_symlink():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            data = orjson.loads(fh.read(65536))
    except (OSError, orjson.JSONDecodeError):
        data = None
    with contextlib.suppress(OSError):
        path.unlink()
    return data if isinstance(data, dict) else None
