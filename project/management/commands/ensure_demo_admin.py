"""``ensure_demo_admin``: the demo's admin/admin superuser, for ``make serve``.

Demo only: it lives in the demo project (``project``, an installed app of the demo
settings), not in wfstate, so that no host that installs the wheel gets a command that
creates a superuser with a known password.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the demo superuser admin/admin if it is missing, and say how to log in."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="admin")
        parser.add_argument("--url", default="http://127.0.0.1:8000/admin/")

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        username, password = options["username"], options["password"]
        if User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
            created = False
        else:
            User._default_manager.create_superuser(
                **{User.USERNAME_FIELD: username}, email="", password=password
            )
            created = True
        self.stdout.write(
            ("created" if created else "exists") + f": demo admin user {username!r}, "
            f"password {password!r} (demo only)"
        )
        self.stdout.write(f"open {options['url']}")
