"""Secret inputs: encrypted at the edge, decrypted only for a step, masked on the way out.

An input declared ``secret: true`` is validated like any other, then **sealed** before
the run's first write: the state file (and so the index, the API, the admin, bundles
and the history) holds ``{"$secret": "<Fernet token>"}``, never the value. The engine
**opens** it only into a step's template context (the command line, ``with:``,
``env:``) and a Python step's ``ctx.inputs``; whatever a step prints, returns or raises
is **masked** (every secret value replaced by ``********``) before it is checkpointed.

Keys come from ``WFSTATE["SECRET_KEYS"]``: Fernet keys, the first encrypts, all of
them decrypt (``MultiFernet``), so a key is rotated by putting the new one first and
keeping the old one until every run sealed with it is gone. Without keys, one is
derived from Django's ``SECRET_KEY`` (rotating ``SECRET_KEY`` then makes older secret
inputs unreadable: set ``SECRET_KEYS`` in production; docs/operations.md).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from wfstate.exceptions import ConfigurationError

MARK = "$secret"
MASK = "********"

_cache: dict[tuple[str, ...], MultiFernet] = {}


def _keys() -> tuple[str, ...]:
    from django.conf import settings

    from wfstate.conf import conf

    keys = tuple(str(k) for k in conf.SECRET_KEYS)
    if keys:
        return keys
    digest = hashlib.sha256(b"wfstate-secret-inputs:" + str(settings.SECRET_KEY).encode()).digest()
    return (base64.urlsafe_b64encode(digest).decode(),)


def fernet() -> MultiFernet:
    """The keys of the settings (cached per key list).

    Raises:
        ConfigurationError: a key in ``SECRET_KEYS`` is not a Fernet key.
    """
    keys = _keys()
    found = _cache.get(keys)
    if found is None:
        try:
            found = MultiFernet([Fernet(k) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"WFSTATE['SECRET_KEYS'] holds a key that is not a Fernet key: {exc} "
                "(make one with cryptography.fernet.Fernet.generate_key())"
            ) from None
        _cache.clear()
        _cache[keys] = found
    return found


def is_sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {MARK} and isinstance(value[MARK], str)


def seal_value(value: Any) -> dict[str, str]:
    """Encrypt one value (any JSON value) into ``{"$secret": token}``."""
    import orjson

    return {MARK: fernet().encrypt(orjson.dumps(value)).decode("ascii")}


def open_value(value: Any) -> Any:
    """The clear value of a sealed one (anything else is returned as it is).

    Raises:
        ConfigurationError: no key of ``SECRET_KEYS`` opens it (a key was dropped).
    """
    import orjson

    if not is_sealed(value):
        return value
    try:
        return orjson.loads(fernet().decrypt(value[MARK].encode("ascii")))
    except InvalidToken:
        raise ConfigurationError(
            "a secret input cannot be decrypted with any key of WFSTATE['SECRET_KEYS'] "
            "(was the key it was sealed with removed?)"
        ) from None


def secret_names(definition: Any) -> set[str]:
    return {i.name for i in getattr(definition, "inputs", ()) if getattr(i, "secret", False)}


def seal_inputs(definition: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with the definition's secret inputs sealed."""
    names = secret_names(definition)
    return {
        k: seal_value(v) if k in names and v is not None and not is_sealed(v) else v
        for k, v in values.items()
    }


def open_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with every sealed input opened (for a step, never for a face)."""
    return {k: open_value(v) for k, v in values.items()}


def clear_values(values: Mapping[str, Any]) -> list[str]:
    """The clear texts to mask, longest first (so a value inside another is not half-masked)."""
    found = set()
    for value in values.values():
        if is_sealed(value):
            clear = open_value(value)
            text = clear if isinstance(clear, str) else str(clear)
            if text and len(text) >= 3:  # masking "1" everywhere would garble everything
                found.add(text)
    return sorted(found, key=len, reverse=True)


def mask(value: Any, secrets: list[str]) -> Any:
    """``value`` (text, or JSON made of dicts, lists and strings) with secrets masked."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value
    if isinstance(value, bytes):
        for secret in secrets:
            value = value.replace(secret.encode(), MASK.encode())
        return value
    if isinstance(value, dict):
        return {mask(k, secrets): mask(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v, secrets) for v in value]
    return value
