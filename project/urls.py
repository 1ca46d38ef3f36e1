from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/wfstate/", include("wfstate.api.urls")),
    path("metrics/", include("wfstate.metrics.urls")),
]
