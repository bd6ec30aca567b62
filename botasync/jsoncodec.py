"""JSON in and out, fast (orjson) with the standard library as the fallback.

orjson refuses integers wider than 64 bits and a few other oddities the API may
still send; those fall back to `json`, so nothing valid is ever rejected.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_SURROGATES = re.compile("[\ud800-\udfff]")


def loads(data: bytes | str) -> Any:
    """Parse JSON; raise `ValueError` on anything that is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if isinstance(data, bytes):
            data = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
        # json takes an escaped lone surrogate ("\ud800"), which no UTF-8 text can hold:
        # hashing or storing it would fail later, so it becomes U+FFFD here
        return _no_lone_surrogates(json.loads(data))


def _no_lone_surrogates(value: Any) -> Any:
    """The parsed value with every lone surrogate in its strings (and keys) as U+FFFD."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_no_lone_surrogates(k): _no_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_lone_surrogates(v) for v in value]
    return value


def dumps(obj: Any) -> str:
    """Compact JSON text, keys in their given order, non-ASCII kept as is."""
    try:
        return orjson.dumps(obj).decode("utf-8")
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def canonical(obj: Any) -> bytes:
    """The canonical form: keys sorted, compact, UTF-8; equal data gives equal bytes."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return json.dumps(
            obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True
        ).encode("utf-8")
