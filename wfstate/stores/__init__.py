"""State stores: where the JSON state of each run lives (docs/storage.md).

``get_store()`` builds the store that ``WFSTATE["STORE"]`` names, once, and caches it
until the ``WFSTATE`` setting changes (``apps.py`` connects the reset).
"""

from __future__ import annotations

import threading
from typing import Any

from django.utils.module_loading import import_string

from wfstate.stores.base import StateStore, validate_id
from wfstate.stores.jsonfile import JSONFileStore
from wfstate.stores.memory import MemoryStore

__all__ = ["JSONFileStore", "MemoryStore", "StateStore", "get_store", "reset_store", "validate_id"]

_store: StateStore | None = None
_store_guard = threading.Lock()


def store_options() -> dict[str, Any]:
    """The constructor arguments the settings give (the store never reads settings)."""
    from wfstate.conf import conf

    options: dict[str, Any] = {
        "root": conf.STORAGE_DIR,
        "file_mode": conf.FILE_MODE,
        "lock_timeout": conf.LOCK_TIMEOUT,
        "lock_backend": conf.LOCK_BACKEND,
    }
    if conf.LOCK_BACKEND == "redis":
        options["lock_options"] = {"redis_url": conf.REDIS_URL}
    options.update(conf.STORE.get("OPTIONS") or {})
    return options


def get_store() -> StateStore:
    """The configured store (``WFSTATE["STORE"]``), built on first use."""
    global _store
    if _store is None:
        with _store_guard:
            if _store is None:
                from wfstate.conf import conf

                backend = import_string(conf.STORE["BACKEND"])
                _store = backend(**store_options())
    return _store


def reset_store(**_kwargs: Any) -> None:
    """Forget the cached store (connected to ``setting_changed``)."""
    global _store
    _store = None
