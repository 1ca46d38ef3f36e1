"""Test settings: the demo project's, with a throw-away database and storage."""

import os
import tempfile
from pathlib import Path

from project.settings import *  # noqa: F403
from project.settings import BASE_DIR

# Child processes (commands, workers) started by tests inherit this environment, so
# they share the test run's database file and storage directory.
_tmp = Path(os.environ.get("WFSTATE_TEST_TMP") or tempfile.mkdtemp(prefix="wfstate-tests-"))
os.environ["WFSTATE_TEST_TMP"] = str(_tmp)

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
    # A test that starts child processes on its own storage sets WFSTATE_STORAGE_DIR.
    "STORAGE_DIR": Path(os.environ.get("WFSTATE_STORAGE_DIR") or _tmp / "storage"),
    "INDEX_ON_WRITE": os.environ.get("WFSTATE_INDEX_ON_WRITE", "1") == "1",
    "WORKFLOW_DIRS": [BASE_DIR / "project" / "workflows", BASE_DIR / "tests" / "workflows"],
    "LOCK_TIMEOUT": 2.0,
}
