"""Shared fixtures. Store tests need no database; a fixture points STORAGE_DIR at tmp."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CHROMIUM, Cluster
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


@pytest.fixture
def browser_page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Playwright's sync API keeps an event loop in this thread; the test's own ORM calls
    # are plain synchronous ones all the same (the usual setting for Playwright tests).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (make browser installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(15_000)
            yield page
        finally:
            browser.close()


@pytest.fixture
def cluster(settings: Any, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(tmp_path)
    made.settings(settings)
    try:
        yield made
    finally:
        made.close()
