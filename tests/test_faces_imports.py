"""What the faces import: a command prints with ``wfstate.formatting``, never by loading
the admin's SVG drawing code (``wfstate.graph``) or its run page (``wfstate.admin_pages``).

Checked in a fresh interpreter with a host that does not install the admin, so that
nothing but the commands' own imports can load those modules.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = """
import pkgutil, sys
import django
from django.conf import settings

settings.configure(
    INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes", "wfstate"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    USE_TZ=True,
)
django.setup()
import wfstate.management.commands as commands

names = [m.name for m in pkgutil.iter_modules(commands.__path__)]
assert "list_workflow_runs" in names, names
for name in names:
    __import__(f"wfstate.management.commands.{name}")
    loaded = [m for m in ("wfstate.graph", "wfstate.admin_pages") if m in sys.modules]
    assert not loaded, f"command {name} imports {loaded}"
print("ok", len(names))
"""


def test_commands_format_without_importing_the_drawing_code() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok ")
