"""Helpers of the API tests: the generated OpenAPI schema, and checking a response
against the operation's documented response (status, body and headers)."""

from __future__ import annotations

import re
from typing import Any

import jsonschema

API = "/api/wfstate/"


def openapi_schema(client: Any) -> dict[str, Any]:
    response = client.get(f"{API}schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200, response.content
    return response.json()


def _operation(schema: dict[str, Any], path: str, method: str) -> tuple[str, dict[str, Any]]:
    path = path.split("?", 1)[0]
    for template, item in schema["paths"].items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in item:
            return template, item[method.lower()]
    raise AssertionError(f"{method} {path} is not in the schema")


def assert_conforms(schema: dict[str, Any], method: str, path: str, response: Any) -> None:
    """Fail unless ``response`` is one the schema documents for ``method path``."""
    template, operation = _operation(schema, path, method)
    responses = operation["responses"]
    code = str(response.status_code)
    assert code in responses, f"{method} {template}: {code} is undocumented ({sorted(responses)})"
    documented = responses[code]
    content = documented.get("content")
    if not content:
        assert not response.content, f"{method} {template} {code}: unexpected body"
        return
    media = response["Content-Type"].split(";")[0].strip()
    assert media in content, f"{method} {template} {code}: {media} not in {sorted(content)}"
    body_schema = {**content[media]["schema"], "components": schema["components"]}
    jsonschema.validate(
        response.json(),
        body_schema,
        cls=jsonschema.Draft202012Validator,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )
    for name, header in (documented.get("headers") or {}).items():
        if header.get("required"):
            assert response.has_header(name), f"{method} {template} {code}: no {name} header"
