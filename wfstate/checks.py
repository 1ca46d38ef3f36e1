"""System checks (``manage.py check``): misconfiguration is reported here, never by an
exception at import time.

* wfstate.E001 the storage directory is missing and cannot be created, or not writable
* wfstate.E002 ``STORE`` is not a dict, or ``STORE["BACKEND"]`` is not an importable
  StateStore subclass
* wfstate.E003 ``LOCK_BACKEND`` (or ``STORE["OPTIONS"]["lock_backend"]``) is not
  ``"file"``, ``"redis"`` or an importable LockBackend subclass
* wfstate.E004 (retired: an invalid workflow definition is now the warning W004)
* wfstate.E005 an ``API_PERMISSION_CLASSES`` entry cannot be imported
* wfstate.E006 a ``WFSTATE`` value has the wrong type or is out of range (or ``WFSTATE``
  is not a dict)
* wfstate.W001 the storage directory is on a network filesystem (advisory locks unreliable)
* wfstate.W002 a ``WORKFLOW_DIRS`` entry does not exist
* wfstate.W003 an unknown ``WFSTATE`` (or ``WFSTATE["STORE"]``) key, with "did you mean"
* wfstate.W004 a workflow definition is invalid: only that workflow is unusable
* wfstate.W005 several files claim one workflow name: that name is unusable

Workflow problems are warnings on purpose: one bad file must not stop ``migrate``,
``runserver`` and every other command of the host project (the workflow itself refuses
to run, exit 2). ``docs/settings.md`` describes every setting.

Each check reads settings through ``wfstate.conf``; a value that conf refuses is
reported once, by :func:`check_settings` (or :func:`check_backends` for the backends),
and the other checks skip what depends on it.
"""

from __future__ import annotations

import os
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from django.core import checks
from django.utils.module_loading import import_string

from wfstate.exceptions import ConfigurationError

NETWORK_FILESYSTEMS = {
    "nfs", "nfs4", "cifs", "smb", "smbfs", "smb3", "9p", "fuse.sshfs", "sshfs", "ceph",
    "glusterfs", "fuse.glusterfs", "lustre", "gpfs", "afs", "fuse.s3fs", "davfs", "fuse.davfs2",
}  # fmt: skip


def filesystem_type(path: Path, mounts_file: str = "/proc/mounts") -> str | None:
    """The type of the filesystem holding ``path`` (longest mount point that prefixes it)."""
    try:
        with open(mounts_file, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount_point = parts[1].replace("\\040", " ")
        prefix = mount_point.rstrip("/") + "/"
        if (real == mount_point or real.startswith(prefix)) and len(mount_point) >= len(best):
            best, best_type = mount_point, parts[2]
    return best_type


@checks.register("wfstate")
def check_storage(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from wfstate.conf import conf

    errors: list[checks.CheckMessage] = []
    try:
        storage = conf.STORAGE_DIR
    except ConfigurationError:
        return []  # reported by check_settings
    existing = storage
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    # The nearest existing ancestor must be a directory we may write into (a regular
    # file there makes the path uncreatable, even for root, whom os.access always lets in).
    creatable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
    if not storage.exists() and not creatable:
        errors.append(
            checks.Error(
                f"WFSTATE['STORAGE_DIR'] {storage} does not exist and cannot be created.",
                hint=f"Create it, or make {existing} writable by this user.",
                id="wfstate.E001",
            )
        )
    elif storage.exists() and (not storage.is_dir() or not os.access(storage, os.W_OK | os.X_OK)):
        errors.append(
            checks.Error(
                f"WFSTATE['STORAGE_DIR'] {storage} is not a writable directory.",
                hint="Point STORAGE_DIR at a directory this user can write.",
                id="wfstate.E001",
            )
        )
    fstype = filesystem_type(existing)
    if fstype in NETWORK_FILESYSTEMS:
        errors.append(
            checks.Warning(
                f"WFSTATE['STORAGE_DIR'] {storage} is on a {fstype} filesystem, where advisory "
                "file locks are unreliable.",
                hint="Use a local disk, or set WFSTATE['LOCK_BACKEND'] = 'redis'.",
                id="wfstate.W001",
            )
        )
    return errors


@checks.register("wfstate")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Unknown keys (W003, with "did you mean") and wrongly typed values (E006)."""
    from wfstate.conf import DEFAULTS, STORE_KEYS, conf

    try:
        user = conf.user_settings()
    except ConfigurationError as exc:
        return [_settings_error(exc)]
    messages: list[checks.CheckMessage] = []
    for key in user:
        if key not in DEFAULTS:
            messages.append(_unknown_key(f"WFSTATE key {key!r}", str(key), list(DEFAULTS)))
    store = user.get("STORE")
    if isinstance(store, dict):
        for key in store:
            if key not in STORE_KEYS:
                messages.append(
                    _unknown_key(f"WFSTATE['STORE'] key {key!r}", str(key), list(STORE_KEYS))
                )
    for name in DEFAULTS:
        # STORE and LOCK_BACKEND are check_backends' (E002, E003: stable ids).
        if name in ("STORE", "LOCK_BACKEND") or not hasattr(type(conf), name):
            continue
        try:
            getattr(conf, name)
        except ConfigurationError as exc:
            messages.append(_settings_error(exc))
    return messages


def _settings_error(exc: ConfigurationError) -> checks.CheckMessage:
    return checks.Error(
        str(exc),
        hint="docs/settings.md lists every WFSTATE setting with its type and default.",
        id="wfstate.E006",
    )


def _unknown_key(what: str, key: str, known: list[str]) -> checks.CheckMessage:
    # Case slips ("lock_timeout") are matched too: the keys are upper case.
    close = get_close_matches(key.upper(), known, n=1, cutoff=0.6)
    hint = f"Did you mean {close[0]!r}?" if close else "Known keys: " + ", ".join(known) + "."
    return checks.Warning(f"{what} is unknown and ignored.", hint=hint, id="wfstate.W003")


@checks.register("wfstate")
def check_backends(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The store backend (E002) and the lock backend (E003): imported and subclass-checked."""
    from wfstate.conf import conf, import_class
    from wfstate.stores import store_options_error
    from wfstate.stores.base import StateStore
    from wfstate.stores.jsonfile import LOCK_BACKENDS
    from wfstate.stores.locks import LockBackend

    errors: list[checks.CheckMessage] = []
    options: dict[str, Any] = {}
    try:
        store = conf.STORE
    except ConfigurationError as exc:
        errors.append(checks.Error(str(exc), id="wfstate.E002"))
    else:
        options = dict(store["OPTIONS"])
        try:
            backend = import_class("WFSTATE['STORE']['BACKEND']", store["BACKEND"], StateStore)
        except ConfigurationError as exc:
            errors.append(
                checks.Error(
                    str(exc),
                    hint="Use 'wfstate.stores.JSONFileStore' or a dotted path to a StateStore.",
                    id="wfstate.E002",
                )
            )
        else:
            # Options the backend does not take would make the first run a TypeError.
            try:
                problem = store_options_error(backend)
            except ConfigurationError:
                problem = None  # a wrong alias (LOCK_BACKEND...): E003 or E006 names it
            if problem:
                errors.append(
                    checks.Error(
                        problem,
                        hint="WFSTATE['STORE']['OPTIONS'] takes the backend's constructor "
                        "arguments (docs/settings.md).",
                        id="wfstate.E002",
                    )
                )
    hint = "Use 'file', 'redis' or a dotted path to a wfstate.stores.locks.LockBackend."
    candidates: list[tuple[str, Any]] = []
    try:
        candidates.append(("WFSTATE['LOCK_BACKEND']", conf.LOCK_BACKEND))
    except ConfigurationError as exc:
        errors.append(checks.Error(str(exc), hint=hint, id="wfstate.E003"))
    if "lock_backend" in options:
        # The store's own option wins over the top-level alias (see stores.store_options).
        candidates.append(("WFSTATE['STORE']['OPTIONS']['lock_backend']", options["lock_backend"]))
    for label, value in candidates:
        if isinstance(value, type) and issubclass(value, LockBackend):
            continue
        if not isinstance(value, str) or (value not in LOCK_BACKENDS and "." not in value):
            errors.append(
                checks.Error(f"{label} {value!r} is unknown.", hint=hint, id="wfstate.E003")
            )
            continue
        try:
            import_class(label, LOCK_BACKENDS.get(value, value), LockBackend)
        except ConfigurationError as exc:
            errors.append(checks.Error(str(exc), hint=hint, id="wfstate.E003"))
    return errors


@checks.register("wfstate")
def check_api_permissions(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A wrong dotted path would otherwise turn every API request into a 500."""
    from wfstate.conf import conf

    errors: list[checks.CheckMessage] = []
    try:
        paths = conf.API_PERMISSION_CLASSES
    except ConfigurationError:
        return []  # reported by check_settings
    for path in paths:
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(
                checks.Error(
                    f"WFSTATE['API_PERMISSION_CLASSES'] entry {path!r} cannot be imported: {exc}",
                    hint="Use dotted paths to DRF permission classes.",
                    id="wfstate.E005",
                )
            )
    return errors


@checks.register("wfstate")
def check_definitions(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Invalid workflow files are reported at start-up, each with its file and line.

    As warnings: an invalid file makes only its own workflow unusable, never the project.
    """
    from wfstate.conf import conf
    from wfstate.definitions import get_registry

    messages: list[checks.CheckMessage] = []
    try:
        configured_dirs = conf.WORKFLOW_DIRS
        # Only directories the project named: the default <BASE_DIR>/workflows may be absent.
        configured = "WORKFLOW_DIRS" in conf.user_settings()
    except ConfigurationError:
        return []  # reported by check_settings
    for directory in configured_dirs if configured else []:
        if not Path(directory).is_dir():
            messages.append(
                checks.Warning(
                    f"WFSTATE['WORKFLOW_DIRS'] entry {directory} does not exist.",
                    id="wfstate.W002",
                )
            )
    for entry in get_registry().entries():
        if entry.error is None:
            continue
        if entry.duplicate:
            messages.append(
                checks.Warning(
                    str(entry.error),
                    hint=f"Workflow '{entry.name}' cannot be run until only one file "
                    "defines it: rename or remove the others.",
                    id="wfstate.W005",
                )
            )
            continue
        messages.append(
            checks.Warning(
                str(entry.error),
                hint=f"Workflow '{entry.name}' cannot be run until this is fixed; every "
                f"other workflow works. `manage.py validate_workflow {entry.path}` "
                "shows the details.",
                id="wfstate.W004",
            )
        )
    return messages
