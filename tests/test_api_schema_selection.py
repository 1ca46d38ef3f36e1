"""Which views the served OpenAPI schema documents: wfstate's, chosen by class.

The schema generator keeps the endpoints whose view inherits wfstate's schema base
(``WFStateAPIMixin`` for the API views), wherever that class is declared, and drops the
host's own DRF views mounted beside them. (It used to compare each view's
``__module__`` with ``wfstate.api.views``: a wfstate view declared in any other module,
the schema endpoint included once it moved to ``wfstate.api.schema``, went missing.)
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import include, path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tests.helpers import API, openapi_schema
from wfstate.api.views import WFStateAPIMixin


class HostView(APIView):
    """A host's own DRF view, mounted next to wfstate's API."""

    def get(self, request: Request) -> Response:
        return Response({})


class ExtraView(WFStateAPIMixin, APIView):
    """A wfstate API view declared outside ``wfstate.api.views``."""

    @extend_schema(summary="Extra", responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response({})


urlpatterns = [
    path("api/wfstate/", include("wfstate.api.urls")),
    path("api/wfstate/extra/", ExtraView.as_view()),
    path("host/", HostView.as_view()),
]


@pytest.mark.urls(__name__)
def test_the_schema_keeps_wfstate_views_by_class_not_by_module(admin_client: Client) -> None:
    paths: dict[str, Any] = openapi_schema(admin_client)["paths"]
    assert f"{API}extra/" in paths
    assert "/host/" not in paths
    # Every wfstate endpoint is still there, the schema endpoint itself included.
    for expected in ("runs/", "runs/{workflow_id}/", "workflows/", "schema/"):
        assert f"{API}{expected}" in paths
