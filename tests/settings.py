"""Test settings: the demo project's, with a throw-away database and storage."""

import os
import tempfile
from pathlib import Path

from project.settings import *  # noqa: F403
from project.settings import BASE_DIR

_tmp = Path(tempfile.mkdtemp(prefix="wfstate-tests-"))

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_tmp / "test.sqlite3"),
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        "TEST": {"NAME": str(_tmp / "test.sqlite3")},
    }
}
if os.environ.get("WFSTATE_TEST_DB") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "test",
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": "127.0.0.1",
            "PORT": "5432",
        }
    }

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

WFSTATE = {
    "STORAGE_DIR": _tmp / "storage",
    "WORKFLOW_DIRS": [BASE_DIR / "project" / "workflows", BASE_DIR / "tests" / "workflows"],
    "LOCK_TIMEOUT": 2.0,
}
