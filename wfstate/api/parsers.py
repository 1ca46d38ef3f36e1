"""A JSON parser that bounds what a request body may cost.

DRF's ``JSONParser`` reads the whole body whatever its size (``DATA_UPLOAD_MAX_MEMORY_SIZE``
does not apply to streamed bodies) and Python's ``json`` can hit ``RecursionError`` on a
deeply nested document, which would be a 500. This parser reads at most
``MAX_BODY_BYTES`` (+1 to detect more), parses with orjson (strict JSON: no NaN, valid
UTF-8, depth capped by orjson itself at 1024) and then refuses documents nested deeper
than ``MAX_DEPTH``. Every refusal is a 400 ``ParseError`` with its own code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

import orjson
from rest_framework import exceptions
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer

from wfstate.api.exceptions import RequestTooDeep, RequestTooLarge

MAX_BODY_BYTES = 1024 * 1024
# Request bodies are {"workflow_name", "inputs": {name: scalar}}: 32 levels is generous.
MAX_DEPTH = 32


def depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


class BoundedJSONParser(BaseParser):
    media_type = "application/json"
    renderer_class = JSONRenderer
    max_bytes = MAX_BODY_BYTES
    max_depth = MAX_DEPTH

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        data = stream.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise RequestTooLarge(
                f"Request body larger than {self.max_bytes} bytes.", code="request_too_large"
            )
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            if "depth" in str(exc).lower() or "recursion" in str(exc).lower():
                raise RequestTooDeep(
                    f"Request body nested deeper than {self.max_depth} levels.",
                    code="request_too_deep",
                ) from None
            raise exceptions.ParseError(f"JSON parse error - {exc}") from None
        if depth_exceeds(value, self.max_depth):
            raise RequestTooDeep(
                f"Request body nested deeper than {self.max_depth} levels.", code="request_too_deep"
            )
        return value
