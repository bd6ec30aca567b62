"""JSON in and out, fast (orjson) with the standard library as the fallback.

orjson refuses integers wider than 64 bits and a few other oddities the API may
still send; those fall back to `json`, so nothing valid is ever rejected.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; raise `ValueError` on anything that is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        if isinstance(data, bytes):
            data = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
        return json.loads(data)


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
