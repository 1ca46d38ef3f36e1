"""Who may use the API.

Permissions: ``WFSTATE["API_PERMISSION_CLASSES"]`` (default: admin users), read on every
request and never taken from the host's ``DEFAULT_PERMISSION_CLASSES``: a host whose
own API is open to anyone (``AllowAny``) must not open its workflow runs too.

Authentication: the host's ``DEFAULT_AUTHENTICATION_CLASSES`` (session and basic by
default), read on every request too, so the views follow the settings in force
(``override_settings`` included) rather than those seen when DRF was imported.
"""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.settings import api_settings

from wfstate.conf import conf


def permission_classes() -> list[type[BasePermission]]:
    """The configured permission classes (dotted paths or classes), imported now."""
    classes: list[type[BasePermission]] = []
    item: Any
    for item in conf.API_PERMISSION_CLASSES:
        classes.append(import_string(item) if isinstance(item, str) else item)
    return classes


class AccessMixin:
    """A view's authenticators and permissions, as the module docstring says."""

    def get_authenticators(self) -> list[BaseAuthentication]:
        # The stubs type these as dotted paths; DRF has already imported them.
        classes: list[Any] = list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
        return [cls() for cls in classes]

    def get_permissions(self) -> list[BasePermission]:
        return [cls() for cls in permission_classes()]
