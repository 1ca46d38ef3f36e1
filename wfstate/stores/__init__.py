"""State stores: where the JSON state of each run lives (docs/storage.md).

``get_store()`` builds the store that ``WFSTATE["STORE"]`` names, once, and caches it
until the ``WFSTATE`` setting changes (``apps.py`` connects the reset).
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from django.utils.module_loading import import_string

from wfstate.stores.base import StateStore, validate_id
from wfstate.stores.jsonfile import JSONFileStore
from wfstate.stores.memory import MemoryStore

__all__ = [
    "JSONFileStore",
    "MemoryStore",
    "StateStore",
    "get_store",
    "reset_store",
    "store_options",
    "store_options_error",
    "validate_id",
]

_store: StateStore | None = None
_store_guard = threading.Lock()


def store_options(backend: type[StateStore] | None = None) -> dict[str, Any]:
    """The constructor arguments the settings give ``backend`` (the configured one by
    default): ``WFSTATE["STORE"]["OPTIONS"]``, over the top-level settings the backend
    declares it takes (``StateStore.setting_options``; ``LOCK_BACKEND``, ``REDIS_URL``,
    ``FILE_MODE``... are aliases of ``JSONFileStore``'s options). The store never reads
    settings itself.
    """
    from wfstate.conf import conf

    if backend is None:
        backend = import_string(conf.STORE["BACKEND"])
    options = dict(conf.STORE.get("OPTIONS") or {})
    return backend.options_from_settings(lambda name: getattr(conf, name), options)


def store_options_error(backend: type[StateStore] | None = None) -> str | None:
    """What is wrong with the options the settings give ``backend`` (an option it does
    not take, a required one missing), or None; for a system check, before
    ``get_store()`` fails with a ``TypeError``."""
    from wfstate.conf import conf

    if backend is None:
        backend = import_string(conf.STORE["BACKEND"])
    options = store_options(backend)
    try:
        inspect.signature(backend).bind(**options)
    except TypeError as exc:
        return (
            f"{backend.__module__}.{backend.__qualname__} does not take the options "
            f"{sorted(options)}: {exc}"
        )
    return None


def get_store() -> StateStore:
    """The configured store (``WFSTATE["STORE"]``), built on first use."""
    global _store
    if _store is None:
        with _store_guard:
            if _store is None:
                from wfstate.conf import conf

                backend = import_string(conf.STORE["BACKEND"])
                _store = backend(**store_options(backend))
    return _store


def reset_store(**_kwargs: Any) -> None:
    """Forget the cached store (connected to ``setting_changed``)."""
    global _store
    _store = None
