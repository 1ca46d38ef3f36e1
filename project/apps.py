from django.apps import AppConfig


class DemoConfig(AppConfig):
    """The demo project as an app, for its demo-only commands (``ensure_demo_admin``),
    which must never ship in wfstate's wheel."""

    name = "project"
    verbose_name = "wfstate demo"
