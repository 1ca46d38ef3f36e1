import os

from django.apps import AppConfig
from django.core.signals import setting_changed

_warmed = False


def _warm_before_fork() -> None:
    """Load, once and before a fork, what executing a task would load in the child.

    A forking worker (RQ's default ``Worker``) executes each task in a fresh child of a
    parent that never executes one itself: whatever the task loads on first use (the
    task's module, the store) was loaded again in every child, on the way to the run's
    first step. Loaded here, the children inherit it. Nothing is connected or opened:
    the store connects on first use, in the child.
    """
    global _warmed
    if _warmed:
        return
    _warmed = True
    try:
        import wfstate.tasks  # noqa: F401 - declaring the task needs a task backend
        from wfstate.stores import get_store

        get_store()
    except Exception:  # noqa: S110 - the child loads (and reports) it as it always did
        pass


class WFStateConfig(AppConfig):
    name = "wfstate"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"
    _fork_hook_registered = False

    def ready(self) -> None:
        # Register checks and signal receivers; nothing else happens at start-up.
        from wfstate import checks  # noqa: F401 - registers the system checks
        from wfstate.stores import reset_store

        def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
            if setting == "WFSTATE":
                reset_store()

        setting_changed.connect(_on_setting_changed, dispatch_uid="wfstate.reset_store", weak=False)
        # Only processes that fork without exec run it (a task worker's parent, a
        # preloading web server); subprocesses never do.
        if not WFStateConfig._fork_hook_registered:
            WFStateConfig._fork_hook_registered = True
            os.register_at_fork(before=_warm_before_fork)
