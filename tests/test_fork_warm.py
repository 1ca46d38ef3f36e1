"""A process that forks without exec (RQ's default worker, before each work horse) loads
what executing a task needs once, before its first fork (``wfstate.apps``): the children
inherit it instead of loading it each. Checked in a fresh interpreter, where nothing has
loaded the task's module yet: the control (before the fork, and after a subprocess,
which runs no fork hook) shows it absent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import os, subprocess, sys
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=[
        "django.contrib.auth", "django.contrib.contenttypes", "django_tasks", "wfstate"
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    TASKS=%(tasks)s,
    WFSTATE={"STORAGE_DIR": %(storage)r},
    USE_TZ=True,
)
django.setup()
import wfstate.stores

subprocess.run(["true"], check=True)  # no fork hook for a subprocess
print("before", "wfstate.tasks" in sys.modules, wfstate.stores._store is not None)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    loaded = "wfstate.tasks" in sys.modules, wfstate.stores._store is not None
    os.write(write, ("%%s %%s" %% loaded).encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(pid, 0)
print("child", os.read(read, 100).decode(), os.waitstatus_to_exitcode(status))
"""


def probe(tmp_path: Path, tasks: str) -> list[str]:
    code = PROBE % {"tasks": tasks, "storage": str(tmp_path / "storage")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_a_forked_child_inherits_the_task_module_and_the_store(tmp_path: Path) -> None:
    tasks = '{"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}'
    assert probe(tmp_path, tasks) == ["before False False", "child True True 0"]


def test_a_task_module_that_cannot_load_leaves_the_fork_and_the_child_as_before(
    tmp_path: Path,
) -> None:
    # No backend named "default": declaring the task fails. The fork goes on; the child
    # would load (and report) it on first use, as without the warm-up.
    tasks = '{"other": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}'
    assert probe(tmp_path, tasks) == ["before False False", "child False False 0"]
