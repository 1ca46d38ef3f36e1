"""Test settings: the demo project's, with a throw-away database and storage."""

import os
import tempfile
from pathlib import Path
from typing import Any, cast

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
            # Children of a test (workers) are handed the test database's name.
            "NAME": os.environ.get("WFSTATE_TEST_PG_NAME", "test"),
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

# Scale-out tests (tests/test_scale.py) start RQ workers with these switches; each test
# has its own queue name and Redis key prefix, so concurrent test runs never meet.
if os.environ.get("WFSTATE_TEST_TASKS") == "rq":
    _rq_queue = os.environ.get("WFSTATE_TEST_RQ_QUEUE", "default")
    INSTALLED_APPS = [*INSTALLED_APPS, "django_rq", "django_tasks_rq"]  # noqa: F405
    # "default" stays valid: wfstate's task is declared on it (checked at import).
    _rq_backend: dict[str, Any] = {
        "BACKEND": "django_tasks_rq.RQBackend",
        "QUEUES": ["default", _rq_queue],
    }
    TASKS = {"default": _rq_backend}
    RQ_QUEUES = {
        name: {
            "URL": os.environ.get("WFSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "DEFAULT_TIMEOUT": -1,
        }
        for name in ("default", _rq_queue)
    }
    WFSTATE["TASK_QUEUE"] = _rq_queue
if os.environ.get("WFSTATE_TEST_LOCK_BACKEND") == "redis":
    WFSTATE["LOCK_BACKEND"] = "redis"
    WFSTATE["STORE"] = {
        "BACKEND": "wfstate.stores.JSONFileStore",
        "OPTIONS": {
            "lock_options": {
                "redis_url": os.environ.get("WFSTATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                "prefix": os.environ.get("WFSTATE_TEST_REDIS_PREFIX", "wfstate-test"),
            }
        },
    }
# WFSTATE_TEST_STORE=contract runs the suite against tests/contract_store.py, a store
# written from the documented StateStore contract alone (its options come from the
# settings it declares: STORAGE_DIR and LOCK_TIMEOUT).
if os.environ.get("WFSTATE_TEST_STORE") == "contract":
    WFSTATE["STORE"] = {"BACKEND": "tests.contract_store.ContractStore", "OPTIONS": {}}
if os.environ.get("WFSTATE_TEST_WORKFLOW_DIR"):
    _extra_dir = Path(os.environ["WFSTATE_TEST_WORKFLOW_DIR"])
    WFSTATE["WORKFLOW_DIRS"] = [*cast("list[Path]", WFSTATE["WORKFLOW_DIRS"]), _extra_dir]
