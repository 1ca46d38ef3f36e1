"""Framing of append-only side files (a loop's finished iterations, docs/storage.md).

Each record is one line::

    <length: 8 hex digits> <crc32: 8 hex digits> <JSON payload>\\n

The length and checksum make a torn last record (a crash in the middle of an append)
detectable: :func:`decode` stops at the first record that is short, mis-sized or whose
checksum does not match, and reports the byte length of the valid prefix, so the
writer can truncate the tail before appending again. A record is never half-read.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson

_HEADER = 18  # 8 hex + space + 8 hex + space


def encode(record: Any) -> bytes:
    """One framed record (``record`` must be JSON-serialisable)."""
    payload = orjson.dumps(record)
    return b"%08x %08x " % (len(payload), zlib.crc32(payload)) + payload + b"\n"


def decode(data: bytes, limit: int | None = None) -> tuple[list[Any], int]:
    """The valid records at the start of ``data`` (at most ``limit``) and their byte length.

    Never raises: whatever follows the first invalid record is not returned.
    """
    records: list[Any] = []
    pos, size = 0, len(data)
    while pos < size and (limit is None or len(records) < limit):
        header = data[pos : pos + _HEADER]
        if len(header) < _HEADER or header[8:9] != b" " or header[17:18] != b" ":
            break
        try:
            length = int(header[:8], 16)
            crc = int(header[9:17], 16)
        except ValueError:
            break
        start = pos + _HEADER
        end = start + length
        if end + 1 > size or data[end : end + 1] != b"\n":
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        try:
            records.append(orjson.loads(payload))
        except orjson.JSONDecodeError:
            break
        pos = end + 1
    return records, pos
