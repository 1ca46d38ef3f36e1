"""System checks (``manage.py check``): misconfiguration is reported here, never by an
exception at import time.

* wfstate.E001 the storage directory is missing and cannot be created, or not writable
* wfstate.E002 ``STORE["BACKEND"]`` is not an importable StateStore
* wfstate.E003 ``LOCK_BACKEND`` is unknown
* wfstate.E004 a workflow definition is invalid
* wfstate.E005 an ``API_PERMISSION_CLASSES`` entry cannot be imported
* wfstate.W001 the storage directory is on a network filesystem (advisory locks unreliable)
* wfstate.W002 a ``WORKFLOW_DIRS`` entry does not exist
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.core import checks
from django.utils.module_loading import import_string

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
    storage = conf.STORAGE_DIR
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
def check_backends(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from wfstate.conf import conf
    from wfstate.stores.base import StateStore
    from wfstate.stores.jsonfile import LOCK_BACKENDS

    errors: list[checks.CheckMessage] = []
    backend_path = conf.STORE.get("BACKEND")
    try:
        backend = import_string(str(backend_path))
    except ImportError as exc:
        errors.append(
            checks.Error(
                f"WFSTATE['STORE']['BACKEND'] {backend_path!r} cannot be imported: {exc}",
                hint="Use 'wfstate.stores.JSONFileStore' or a dotted path to a StateStore.",
                id="wfstate.E002",
            )
        )
    else:
        if not (isinstance(backend, type) and issubclass(backend, StateStore)):
            errors.append(
                checks.Error(
                    f"WFSTATE['STORE']['BACKEND'] {backend_path!r} is not a StateStore subclass.",
                    id="wfstate.E002",
                )
            )
    lock_backend = conf.LOCK_BACKEND
    if lock_backend not in LOCK_BACKENDS and "." not in lock_backend:
        errors.append(
            checks.Error(
                f"WFSTATE['LOCK_BACKEND'] {lock_backend!r} is unknown.",
                hint="Use 'file' or 'redis'.",
                id="wfstate.E003",
            )
        )
    return errors


@checks.register("wfstate")
def check_api_permissions(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """A wrong dotted path would otherwise turn every API request into a 500."""
    from wfstate.conf import conf

    errors: list[checks.CheckMessage] = []
    for path in conf.API_PERMISSION_CLASSES:
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
    """Invalid workflow files are reported at start-up, each with its file and line."""
    from django.conf import settings

    from wfstate.conf import conf
    from wfstate.definitions import get_registry

    messages: list[checks.CheckMessage] = []
    registry = get_registry()
    # Only directories the project named: the default <BASE_DIR>/workflows may be absent.
    configured = "WORKFLOW_DIRS" in (getattr(settings, "WFSTATE", None) or {})
    for directory in conf.WORKFLOW_DIRS if configured else []:
        if not Path(directory).is_dir():
            messages.append(
                checks.Warning(
                    f"WFSTATE['WORKFLOW_DIRS'] entry {directory} does not exist.",
                    id="wfstate.W002",
                )
            )
    for error in registry.errors():
        messages.append(
            checks.Error(
                str(error),
                hint="Run `manage.py validate_workflow PATH` for the details.",
                id="wfstate.E004",
            )
        )
    return messages
