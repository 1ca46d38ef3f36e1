from django.apps import AppConfig
from django.core.signals import setting_changed


class WFStateConfig(AppConfig):
    name = "wfstate"
    verbose_name = "Workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Register checks and signal receivers; nothing else happens at start-up.
        from wfstate import checks  # noqa: F401 - registers the system checks
        from wfstate.stores import reset_store

        def _on_setting_changed(*, setting: str, **kwargs: object) -> None:
            if setting == "WFSTATE":
                reset_store()

        setting_changed.connect(_on_setting_changed, dispatch_uid="wfstate.reset_store", weak=False)
