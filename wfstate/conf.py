"""Typed, lazy view over ``settings.WFSTATE``.

Every property reads Django settings when it is accessed, never at import time, so
``override_settings(WFSTATE=...)`` just works (the pattern of django-cors-headers'
``conf.py``). Only the store instance is cached (see ``wfstate.stores.get_store``), and
that cache is cleared when ``WFSTATE`` changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

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
    "RETENTION": {},  # keep every run (prune_workflow_runs --older-than still works)
    "SECRET_KEYS": [],  # default: a key derived from Django's SECRET_KEY
}


class Settings:
    def _get(self, name: str) -> Any:
        user = getattr(settings, "WFSTATE", None) or {}
        return user.get(name, DEFAULTS[name])

    @property
    def _base_dir(self) -> Path:
        return Path(getattr(settings, "BASE_DIR", Path.cwd()))

    @property
    def STORAGE_DIR(self) -> Path:
        value = self._get("STORAGE_DIR")
        return Path(value) if value is not None else self._base_dir / "storage"

    @property
    def WORKFLOW_DIRS(self) -> list[Path]:
        value = self._get("WORKFLOW_DIRS")
        if value is None:
            return [self._base_dir / "workflows"]
        return [Path(v) for v in value]

    @property
    def STORE(self) -> dict[str, Any]:
        value = dict(DEFAULTS["STORE"])
        value.update(self._get("STORE") or {})
        value.setdefault("OPTIONS", {})
        return value

    @property
    def LOCK_TIMEOUT(self) -> float:
        return float(self._get("LOCK_TIMEOUT"))

    @property
    def LOCK_BACKEND(self) -> str:
        return str(self._get("LOCK_BACKEND"))

    @property
    def REDIS_URL(self) -> str:
        return str(self._get("REDIS_URL"))

    @property
    def FILE_MODE(self) -> int:
        return int(self._get("FILE_MODE"))

    @property
    def MAX_INLINE_OUTPUT(self) -> int:
        return int(self._get("MAX_INLINE_OUTPUT"))

    @property
    def INDEX_ON_WRITE(self) -> bool:
        return bool(self._get("INDEX_ON_WRITE"))

    @property
    def API_PERMISSION_CLASSES(self) -> list[str]:
        return list(self._get("API_PERMISSION_CLASSES"))

    @property
    def TASK_BACKEND(self) -> str:
        return str(self._get("TASK_BACKEND"))

    @property
    def TASK_QUEUE(self) -> str:
        return str(self._get("TASK_QUEUE"))

    @property
    def RETENTION(self) -> dict[str, Any]:
        """How long finished runs are kept, by status and per workflow.

        ``{"completed": "30d", "failed": "90d", "workflows": {"NAME": {"completed": "7d"}}}``;
        a missing status or ``None`` keeps those runs. Applied by ``prune_workflow_runs``
        (without ``--older-than``) and by the scheduler when one runs (docs/retention.md).
        """
        return dict(self._get("RETENTION") or {})

    @property
    def SECRET_KEYS(self) -> list[str]:
        """Fernet keys for inputs declared ``secret: true``: the first encrypts, all decrypt.

        Rotate by putting a new key first and keeping the old ones while runs sealed
        with them remain. Empty: one key derived from Django's ``SECRET_KEY``.
        """
        return [str(k) for k in self._get("SECRET_KEYS") or []]


conf = Settings()
