"""Shared fixtures. Store tests need no database; a fixture points STORAGE_DIR at tmp."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wfstate.stores import JSONFileStore


@pytest.fixture
def store(tmp_path: Path) -> JSONFileStore:
    """A file store in a fresh directory, with a short lock timeout."""
    return JSONFileStore(tmp_path / "storage", lock_timeout=0.5)


@pytest.fixture
def wfstate_settings(settings: Any, tmp_path: Path) -> dict[str, Any]:
    """Point WFSTATE at a fresh storage directory for this test (the store is reset)."""
    settings.WFSTATE = {**settings.WFSTATE, "STORAGE_DIR": tmp_path / "storage"}
    return settings.WFSTATE
