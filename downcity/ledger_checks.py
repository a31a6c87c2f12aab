"""Validation of Ledger arguments and of the `usage_records` rows it writes next to its charges."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Integer, String, Text

from downcity.errors import invalid
from downcity.store.database import now_ms
from downcity.store.schema import usage_records

# The ledger owns these: a caller-supplied charge could disagree with the entry it links to.
_LEDGER_OWNED = ("charge_microcredits", "ledger_entry_key")
_COLUMNS = {column.name: column for column in usage_records.columns}
_MAX_KEY_LENGTH = 200


def _column_default(name: str) -> Any:
    default = _COLUMNS[name].default
    return getattr(default, "arg", None) if default is not None else None


def _check_value(name: str, value: Any) -> None:
    column = _COLUMNS[name]
    field = f"usage.{name}"
    if value is None:
        if not column.nullable:
            raise invalid(f"{field} is required", field=field)
        return
    if isinstance(column.type, Integer):
        if isinstance(value, bool) or not isinstance(value, int):
            raise invalid(f"{field} must be an integer", field=field)
    elif isinstance(column.type, String | Text):
        if not isinstance(value, str):
            raise invalid(f"{field} must be a string", field=field)
        length = getattr(column.type, "length", None)
        if length is not None and len(value) > length:
            raise invalid(f"{field} must be at most {length} characters", field=field)


def normalize_usage(usage: Any) -> dict[str, Any]:
    """A full `usage_records` row from a caller's dict, or a 422 naming the bad field."""
    if not isinstance(usage, dict):
        raise invalid("usage must be an object of usage_records columns", field="usage")
    for name in usage:
        if name not in _COLUMNS:
            raise invalid(f"usage.{name} is not a usage_records column", field=f"usage.{name}")
        if name in _LEDGER_OWNED:
            raise invalid(f"usage.{name} is set by the ledger", field=f"usage.{name}")
    row = {name: usage.get(name, _column_default(name)) for name in _COLUMNS}
    if row["created_at_ms"] is None:
        row["created_at_ms"] = now_ms()
    for name, value in row.items():
        if name not in _LEDGER_OWNED:
            _check_value(name, value)
    if not row["request_id"]:
        raise invalid("usage.request_id must not be empty", field="usage.request_id")
    return row


def check_text(value: Any, field: str) -> str:
    """A non-empty string of at most 200 characters, else a 422 naming `field`."""
    if not isinstance(value, str) or not value:
        raise invalid(f"{field} must be a non-empty string", field=field)
    if len(value) > _MAX_KEY_LENGTH:
        raise invalid(f"{field} must be at most {_MAX_KEY_LENGTH} characters", field=field)
    return value


def check_amount(value: Any, *, positive: bool) -> int:
    """An integer amount of microcredits (> 0 when `positive`, else >= 0)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("amount must be an integer number of microcredits", field="amount_microcredits")
    if value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise invalid(f"amount must be {bound}", field="amount_microcredits")
    return value


def check_optional_text(value: Any, field: str) -> str | None:
    """None or a string."""
    if value is not None and not isinstance(value, str):
        raise invalid(f"{field} must be a string", field=field)
    return value


def check_metadata(value: Any) -> dict[str, Any] | None:
    """None or a JSON-serialisable object."""
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise TypeError
        json.dumps(value)
    except (TypeError, ValueError):
        raise invalid("metadata must be a JSON object", field="metadata") from None
    return value
