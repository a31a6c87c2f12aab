"""Validation of Ledger arguments and of the `usage_records` rows it writes next to its charges."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import BigInteger, Integer, String

from downcity.accounts import MAX_ACCOUNT_ID_CHARS
from downcity.errors import invalid
from downcity.store.database import now_ms
from downcity.store.schema import usage_records

# The ledger owns these: a caller-supplied charge could disagree with the entry it links to.
_LEDGER_OWNED = ("charge_microcredits", "ledger_entry_key")
_COLUMNS = {column.name: column for column in usage_records.columns}
_MAX_KEY_LENGTH = 200
# 10^15 microcredits is a billion dollars: far above any real op, far below BIGINT overflow.
MAX_AMOUNT = 10**15


def _column_default(name: str) -> Any:
    return getattr(_COLUMNS[name].default, "arg", None)


def _check_value(name: str, value: Any) -> None:
    column = _COLUMNS[name]
    field = f"usage.{name}"
    if value is None:
        if not column.nullable:
            raise invalid(f"{field} is required", field=field)
        return
    if isinstance(column.type, Integer):
        bits = 63 if isinstance(column.type, BigInteger) else 31
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**bits) <= value < 2**bits:
            raise invalid(f"{field} must be a {bits + 1}-bit integer", field=field)
    elif isinstance(column.type, String):
        # Text columns are Strings too (of no length unless one was given).
        if not isinstance(value, str):
            raise invalid(f"{field} must be a string", field=field)
        _check_storable(value, field, column.type.length)


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


def _check_storable(value: str, field: str, max_length: int | None) -> None:
    # PostgreSQL refuses NUL in text; refusing it here keeps SQLite and PostgreSQL alike and gives a 422.
    if "\x00" in value:
        raise invalid(f"{field} must not contain NUL characters", field=field)
    if max_length is not None and len(value) > max_length:
        raise invalid(f"{field} must be at most {max_length} characters", field=field)


def check_text(value: Any, field: str) -> str:
    """A non-empty string of at most 200 characters, else a 422 naming `field`."""
    if not isinstance(value, str) or not value:
        raise invalid(f"{field} must be a non-empty string", field=field)
    _check_storable(value, field, _MAX_KEY_LENGTH)
    return value


def check_account(value: Any) -> str:
    """An account id (see `downcity.accounts`), else a 422 naming `user_id`, the field ledger callers pass."""
    if not isinstance(value, str) or not value:
        raise invalid("user_id must be a non-empty string", field="user_id")
    _check_storable(value, "user_id", MAX_ACCOUNT_ID_CHARS)
    return value


def check_amount(value: Any, *, positive: bool) -> int:
    """An integer amount of microcredits (> 0 when `positive`, else >= 0), at most `MAX_AMOUNT`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid("amount must be an integer number of microcredits", field="amount_microcredits")
    if value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise invalid(f"amount must be {bound}", field="amount_microcredits")
    if value > MAX_AMOUNT:
        raise invalid(f"amount must be at most {MAX_AMOUNT}", field="amount_microcredits")
    return value


def check_optional_text(value: Any, field: str, max_length: int | None = None) -> str | None:
    """None or a storable string of at most `max_length` characters."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{field} must be a string", field=field)
    _check_storable(value, field, max_length)
    return value


def check_metadata(value: Any) -> dict[str, Any] | None:
    """None or a JSON object PostgreSQL can store."""
    if value is None:
        return None
    try:
        if not isinstance(value, dict):
            raise TypeError
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise invalid("metadata must be a JSON object", field="metadata") from None
    if "\\u0000" in encoded:
        raise invalid("metadata must not contain NUL characters", field="metadata")
    return value
