"""Typed, lazy view over ``settings.WFSTATE``.

Every property reads Django settings when it is accessed, never at import time, so
``override_settings(WFSTATE=...)`` just works (the pattern of django-cors-headers'
``conf.py``). Only the store instance is cached (see ``wfstate.stores.get_store``), and
that cache is cleared when ``WFSTATE`` changes.

Each property checks the type and range of its value and raises
:class:`~wfstate.exceptions.ConfigurationError` naming the setting, so a wrong value is a
clear message rather than a ``ValueError`` deep inside the first run. The system checks
(``wfstate.checks.check_settings``) read every property once, so ``manage.py check``
reports the same messages before anything runs. ``docs/settings.md`` lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from wfstate.exceptions import ConfigurationError

DEFAULTS: dict[str, Any] = {
    "STORAGE_DIR": None,  # default: <BASE_DIR>/storage
    "WORKFLOW_DIRS": None,  # default: [<BASE_DIR>/workflows]
    "STORE": {"BACKEND": "wfstate.stores.JSONFileStore", "OPTIONS": {}},
    "LOCK_TIMEOUT": 10.0,
    "LOCK_BACKEND": "file",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "FILE_MODE": 0o600,
    "MAX_INLINE_OUTPUT": 65536,
    "INDEX_ON_WRITE": True,
    "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "TASK_BACKEND": "default",
    "TASK_QUEUE": "default",
    "IDEMPOTENCY_RETENTION": 86400.0,  # seconds an Idempotency-Key keeps naming its run
    "RETENTION": {},  # keep every run (prune_workflow_runs --older-than still works)
    "SECRET_KEYS": [],  # default: a key derived from Django's SECRET_KEY
}

# The keys of WFSTATE["STORE"].
STORE_KEYS = ("BACKEND", "OPTIONS")

# Lock backends by short name; anything else must be a dotted path to a LockBackend.
LOCK_BACKEND_NAMES = ("file", "redis")

REDIS_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _wrong(name: str, expected: str, value: Any) -> ConfigurationError:
    return ConfigurationError(
        f"WFSTATE['{name}'] must be {expected}, not {_describe(value)}.", setting=name
    )


def _is_path(value: Any) -> bool:
    return isinstance(value, str | os.PathLike) and str(value) != ""


def _non_empty_str(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _wrong(name, "a non-empty string", value)
    return value


def _int(name: str, value: Any, expected: str) -> int:
    # bool is an int subclass: True as a size or a mode is a typo, never meant.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong(name, expected, value)
    return value


def import_class(setting: str, dotted: str, base: type) -> type:
    """Import the class a setting names by dotted path and check it subclasses ``base``.

    ``setting`` is how messages name it, e.g. ``"WFSTATE['STORE']['BACKEND']"``.

    Raises:
        ConfigurationError: it cannot be imported, or is not a subclass of ``base``
            (the message names the setting and the path).
    """
    try:
        found = import_string(dotted)
    except ImportError as exc:
        raise ConfigurationError(
            f"{setting} {dotted!r} cannot be imported: {exc}", setting=setting
        ) from exc
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigurationError(
            f"{setting} {dotted!r} is not a {base.__name__} subclass.", setting=setting
        )
    return found


class Settings:
    """The ``WFSTATE`` settings, each read and checked when accessed.

    Every property raises :class:`~wfstate.exceptions.ConfigurationError` (naming the
    setting) when the value has the wrong type or is out of range.
    """

    def user_settings(self) -> Mapping[str, Any]:
        """``settings.WFSTATE`` as the project wrote it (``{}`` when unset).

        Raises:
            ConfigurationError: ``WFSTATE`` is not a dict.
        """
        user = getattr(settings, "WFSTATE", None)
        if user is None:
            return {}
        if not isinstance(user, Mapping):
            raise ConfigurationError(
                f"settings.WFSTATE must be a dict, not {_describe(user)}.", setting="WFSTATE"
            )
        return user

    def _get(self, name: str) -> Any:
        return self.user_settings().get(name, DEFAULTS[name])

    @property
    def _base_dir(self) -> Path:
        return Path(getattr(settings, "BASE_DIR", Path.cwd()))

    @property
    def STORAGE_DIR(self) -> Path:
        """Where state files, locks and quarantined files live (``str`` or ``Path``).

        Default: ``<BASE_DIR>/storage``.
        """
        value = self._get("STORAGE_DIR")
        if value is None:
            return self._base_dir / "storage"
        if not _is_path(value):
            raise _wrong("STORAGE_DIR", "a path (str or Path)", value)
        return Path(value)

    @property
    def WORKFLOW_DIRS(self) -> list[Path]:
        """Directories searched for ``*.yaml``/``*.yml`` definitions (a list of paths).

        Default: ``[<BASE_DIR>/workflows]``; each installed app's ``workflows/`` folder is
        searched as well (see ``wfstate.definitions.registry``).
        """
        value = self._get("WORKFLOW_DIRS")
        if value is None:
            return [self._base_dir / "workflows"]
        # A bare string is a classic slip: list("dir") would be one directory per letter.
        if not isinstance(value, list | tuple) or not all(_is_path(v) for v in value):
            raise _wrong("WORKFLOW_DIRS", "a list of paths (str or Path)", value)
        return [Path(v) for v in value]

    @property
    def STORE(self) -> dict[str, Any]:
        """The state store: ``{"BACKEND": dotted path, "OPTIONS": constructor kwargs}``.

        Default: ``{"BACKEND": "wfstate.stores.JSONFileStore", "OPTIONS": {}}``; a partial
        dict is completed from it.
        """
        raw = self._get("STORE")
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise _wrong("STORE", 'a dict such as {"BACKEND": ..., "OPTIONS": {...}}', raw)
        value = dict(DEFAULTS["STORE"])
        value.update(raw)
        if value.get("OPTIONS") is None:
            value["OPTIONS"] = {}
        if not isinstance(value["BACKEND"], str) or not value["BACKEND"]:
            raise ConfigurationError(
                "WFSTATE['STORE']['BACKEND'] must be a dotted path to a StateStore, not "
                f"{_describe(value['BACKEND'])}.",
                setting="STORE",
            )
        if not isinstance(value["OPTIONS"], Mapping):
            raise ConfigurationError(
                "WFSTATE['STORE']['OPTIONS'] must be a dict of the backend's keyword "
                f"arguments, not {_describe(value['OPTIONS'])}.",
                setting="STORE",
            )
        return value

    @property
    def LOCK_TIMEOUT(self) -> float:
        """Seconds a writer waits for a run's write lock before ``StateLocked`` (a
        number >= 0). Default: ``10.0``."""
        value = self._get("LOCK_TIMEOUT")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _wrong("LOCK_TIMEOUT", "a number of seconds >= 0 (int or float)", value)
        return float(value)

    @property
    def LOCK_BACKEND(self) -> str:
        """``"file"`` (local advisory locks), ``"redis"``, or a dotted path to a
        ``wfstate.stores.locks.LockBackend`` subclass. Default: ``"file"``.

        The import of a dotted path is checked by ``manage.py check`` (``wfstate.E003``).
        """
        value = self._get("LOCK_BACKEND")
        if not isinstance(value, str) or (value not in LOCK_BACKEND_NAMES and "." not in value):
            raise _wrong("LOCK_BACKEND", "'file', 'redis' or a dotted path to a LockBackend", value)
        return value

    @property
    def REDIS_URL(self) -> str:
        """The Redis server of ``LOCK_BACKEND = "redis"`` (a ``redis://``, ``rediss://``
        or ``unix://`` URL). Default: ``"redis://127.0.0.1:6379/0"``."""
        value = self._get("REDIS_URL")
        if not isinstance(value, str) or not value.startswith(REDIS_URL_SCHEMES):
            raise _wrong("REDIS_URL", "a redis://, rediss:// or unix:// URL", value)
        return value

    @property
    def FILE_MODE(self) -> int:
        """Permission bits of every file written (an int such as ``0o640``; the owner
        must keep read and write). Default: ``0o600``."""
        value = _int("FILE_MODE", self._get("FILE_MODE"), "an int such as 0o600")
        if not 0 <= value <= 0o777 or value & 0o600 != 0o600:
            raise ConfigurationError(
                f"WFSTATE['FILE_MODE'] {value:#o} is not a file mode between 0o600 and 0o777 "
                "that lets the owner read and write.",
                setting="FILE_MODE",
            )
        return value

    @property
    def MAX_INLINE_OUTPUT(self) -> int:
        """Bytes of a step's stdout/stderr kept in the state file (an int >= 0); the
        rest spills to a side file. Default: ``65536``."""
        value = _int("MAX_INLINE_OUTPUT", self._get("MAX_INLINE_OUTPUT"), "an int >= 0")
        if value < 0:
            raise _wrong("MAX_INLINE_OUTPUT", "an int >= 0", value)
        return value

    @property
    def INDEX_ON_WRITE(self) -> bool:
        """Update the index row after every checkpoint (``True``/``False``; a string
        such as ``"false"`` is refused, it would be true). Default: ``True``."""
        value = self._get("INDEX_ON_WRITE")
        if not isinstance(value, bool):
            raise _wrong("INDEX_ON_WRITE", "True or False", value)
        return value

    @property
    def API_PERMISSION_CLASSES(self) -> list[str]:
        """Dotted paths of the DRF permission classes of every API view (a list of
        strings). Default: ``["rest_framework.permissions.IsAdminUser"]``."""
        value = self._get("API_PERMISSION_CLASSES")
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
            raise _wrong("API_PERMISSION_CLASSES", "a list of dotted paths (strings)", value)
        return list(value)

    @property
    def TASK_BACKEND(self) -> str:
        """The alias in Django's ``TASKS`` setting that background runs are enqueued on
        (a string). Default: ``"default"``."""
        return _non_empty_str("TASK_BACKEND", self._get("TASK_BACKEND"))

    @property
    def TASK_QUEUE(self) -> str:
        """The queue name background runs are enqueued on (a string). Default:
        ``"default"``."""
        return _non_empty_str("TASK_QUEUE", self._get("TASK_QUEUE"))

    @property
    def IDEMPOTENCY_RETENTION(self) -> float:
        """Seconds an ``Idempotency-Key`` keeps naming the run it started (a number >= 0;
        0: a key only protects against requests racing each other); after that the key
        starts a new run. Default: ``86400.0`` (one day)."""
        value = self._get("IDEMPOTENCY_RETENTION")
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise _wrong("IDEMPOTENCY_RETENTION", "a number of seconds >= 0 (int or float)", value)
        return float(value)

    @property
    def RETENTION(self) -> dict[str, Any]:
        """How long finished runs are kept, by status and per workflow.

        ``{"completed": "30d", "failed": "90d", "workflows": {"NAME": {"completed": "7d"}}}``;
        a missing status or ``None`` keeps those runs. Applied by ``prune_workflow_runs``
        (without ``--older-than``) and by the scheduler when one runs
        (docs/operations.md). Default: ``{}`` (keep every run).
        """
        value = self._get("RETENTION") or {}
        if not isinstance(value, dict):
            raise _wrong("RETENTION", "a dict of status -> age (and 'workflows')", value)
        return dict(value)

    @property
    def SECRET_KEYS(self) -> list[str]:
        """Fernet keys for inputs declared ``secret: true``: the first encrypts, all decrypt.

        Rotate by putting a new key first and keeping the old ones while runs sealed
        with them remain. Default: ``[]``, one key derived from Django's ``SECRET_KEY``.
        """
        value = self._get("SECRET_KEYS") or []
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise _wrong("SECRET_KEYS", "a list of Fernet keys (strings)", value)
        return [str(k) for k in value]


conf = Settings()
