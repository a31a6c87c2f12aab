"""What a string or JSON value must be for PostgreSQL and SQLite to store it, and upstreams to take it.

No U+0000 and no lone surrogate (neither survives PostgreSQL `text` or `jsonb`), no NaN or ±Infinity (not
JSON), integers within a signed 64-bit range (BIGINT columns, upstream int fields), and nesting at most
`MAX_JSON_DEPTH` deep. The HTTP edge applies it to every request; anything storing values that did not come
through a request (upstream answers, hook output) can apply it too.
"""

from __future__ import annotations

import math
import re
from typing import Any

from downcity.errors import invalid

MAX_JSON_DEPTH = 64
MAX_JSON_INT = 2**63 - 1
MIN_JSON_INT = -(2**63)
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(value: str, field: str) -> None:
    """422 when `value` holds U+0000 or a lone surrogate."""
    if "\x00" in value:
        raise invalid(f"{field}: must not contain U+0000", field)
    if _SURROGATE.search(value):
        raise invalid(f"{field}: must not contain a lone surrogate", field)


def _child(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_json(value: Any, path: str = "", depth: int = 1) -> None:
    """422 naming the first value under `path` that breaks the edge rule."""
    field = path or "body"
    if depth > MAX_JSON_DEPTH:
        raise invalid(f"{field}: JSON nesting exceeds {MAX_JSON_DEPTH} levels", field)
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise invalid(f"{field}: numbers must be finite (no NaN or Infinity)", field)
    elif isinstance(value, int) and not isinstance(value, bool):
        if not MIN_JSON_INT <= value <= MAX_JSON_INT:
            raise invalid(f"{field}: integers must fit in a signed 64-bit integer", field)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_json(item, _child(path, index), depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{field} (a key)")
            check_json(item, _child(path, key), depth + 1)
