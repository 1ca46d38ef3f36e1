"""The REST API (docs/api.md): DRF views over the ``wfstate.runs`` service and the index.

Mount it in the host's urls: ``path("api/wfstate/", include("wfstate.api.urls"))``.
Everything the views need (permissions, parsers, error format, pagination, filters,
schema) is set on the views themselves, so the API behaves the same whatever the
host's ``REST_FRAMEWORK`` defaults are; only authentication is the host's.
"""
