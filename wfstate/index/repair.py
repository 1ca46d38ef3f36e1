"""Moving a corrupt state file aside, for ``doctor --fix`` (never deleting it)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from wfstate.exceptions import CorruptState, RunNotFound
from wfstate.index.projection import row_fields
from wfstate.index.rows import PROJECTION_ERRORS
from wfstate.stores.base import StateStore


def quarantine_dir(store: StateStore) -> Path | None:
    """``<STORAGE_DIR>/quarantine`` of a file store, None for a store without files."""
    # store contract: see stores/base.py (the file store's root directory)
    root = getattr(store, "root", None)
    return Path(root) / "quarantine" if root is not None else None


def _corrupt(store: StateStore, workflow_id: str) -> bool | None:
    """Whether the run's file is corrupt now: unparsable, or parsed but outside the
    document's contract (as sync finds it, e.g. a revision out of range); None when
    there is no file."""
    try:
        state = store.load(workflow_id)
    except CorruptState:
        return True
    except RunNotFound:
        return None
    try:
        row_fields(state, lambda name: None)
    except PROJECTION_ERRORS:
        return True
    return False


def quarantine(store: StateStore, workflow_id: str) -> str | None:
    """Move a corrupt state file to ``<STORAGE_DIR>/quarantine/`` (never deleting it).

    The file is checked again under its write lock: a file repaired (or replaced by a
    writer) since it was found corrupt stays where it is, and None is returned.
    Returns the new path.

    Raises:
        StateLocked: the run's write lock could not be taken.
        OSError: the file could not be moved.
    """
    # store contract: see stores/base.py (path_for is the file store's)
    path_for = getattr(store, "path_for", None)
    target_dir = quarantine_dir(store)
    if path_for is None or target_dir is None:
        return None
    source: Path = path_for(workflow_id)
    with store.write_lock(workflow_id):
        if not _corrupt(store, workflow_id):
            return None  # gone, or not corrupt (any more)
        target_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = target_dir / source.name
        if target.exists():
            target = target_dir / f"{source.name}.{int(time.time() * 1000)}"
        # A rename within the storage directory; a copy if quarantine is elsewhere.
        try:
            os.replace(source, target)
        except OSError:
            shutil.move(str(source), str(target))
    return str(target)
