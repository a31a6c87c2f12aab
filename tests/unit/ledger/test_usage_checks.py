"""The usage rows the Ledger writes next to its charges: every refusal is a 422 naming the field, at the bounds."""

from __future__ import annotations

from typing import Any

import pytest

from downcity.accounts import MAX_ACCOUNT_ID_CHARS
from downcity.errors import DowncityHTTPError
from downcity.ledger.checks import (
    check_account,
    check_amount,
    check_metadata,
    check_optional_text,
    check_text,
    normalize_usage,
)

ROW = {
    "request_id": "req_1",
    "city_id": "c1",
    "user_id": "c1/u1",
    "pathway": "text",
    "status": "ok",
    "http_status": 200,
}


def refusal(usage: Any) -> tuple[int, str, str, str | None]:
    with pytest.raises(DowncityHTTPError) as caught:
        normalize_usage(usage)
    return caught.value.status, caught.value.type, caught.value.message, caught.value.field


def test_a_usage_that_is_not_an_object_is_refused_naming_usage() -> None:
    message = "usage must be an object of usage_records columns"
    assert refusal(["req_1"]) == (422, "invalid_request", message, "usage")


def test_a_required_column_left_out_is_refused_by_name() -> None:
    usage = {name: value for name, value in ROW.items() if name != "status"}
    assert refusal(usage) == (422, "invalid_request", "usage.status is required", "usage.status")


@pytest.mark.parametrize(
    ("name", "value", "bits"),
    [
        ("http_status", 2**31, 32),
        ("http_status", -(2**31) - 1, 32),
        ("input_tokens", True, 32),
        ("input_tokens", "12", 32),
        ("input_tokens", 1.0, 32),
        ("input_picocredits", 2**63, 64),
        ("input_picocredits", -(2**63) - 1, 64),
    ],
)
def test_an_integer_column_refuses_what_its_width_cannot_hold(name: str, value: Any, bits: int) -> None:
    message = f"usage.{name} must be a {bits}-bit integer"
    assert refusal({**ROW, name: value}) == (422, "invalid_request", message, f"usage.{name}")


@pytest.mark.parametrize(
    ("name", "value"),
    [("http_status", 2**31 - 1), ("http_status", -(2**31)), ("output_picocredits", 2**63 - 1), ("ttfb_ms", 0)],
)
def test_an_integer_column_takes_every_value_of_its_width(name: str, value: int) -> None:
    assert normalize_usage({**ROW, name: value})[name] == value


def test_a_string_column_refuses_another_type_naming_it() -> None:
    message = "usage.model_id must be a string"
    assert refusal({**ROW, "model_id": 7}) == (422, "invalid_request", message, "usage.model_id")


def test_a_string_column_takes_its_length_and_refuses_one_character_more() -> None:
    assert normalize_usage({**ROW, "model_id": "m" * 128})["model_id"] == "m" * 128
    message = "usage.model_id must be at most 128 characters"
    assert refusal({**ROW, "model_id": "m" * 129}) == (422, "invalid_request", message, "usage.model_id")


def test_a_string_column_refuses_nul_naming_it() -> None:
    message = "usage.key_name must not contain NUL characters"
    assert refusal({**ROW, "key_name": "a\x00b"}) == (422, "invalid_request", message, "usage.key_name")


def test_left_out_columns_take_their_defaults() -> None:
    row = normalize_usage(ROW)
    assert (row["input_tokens"], row["usage_source"], row["model_id"], row["charge_microcredits"]) == (
        0,
        "upstream",
        None,
        0,
    )


@pytest.mark.parametrize(
    ("usage", "message", "field"),
    [
        ({**ROW, "colour": "red"}, "usage.colour is not a usage_records column", "usage.colour"),
        (
            {**ROW, "charge_microcredits": 5},
            "usage.charge_microcredits is set by the ledger",
            "usage.charge_microcredits",
        ),
        ({**ROW, "ledger_entry_key": "k"}, "usage.ledger_entry_key is set by the ledger", "usage.ledger_entry_key"),
        ({**ROW, "request_id": ""}, "usage.request_id must not be empty", "usage.request_id"),
    ],
)
def test_columns_a_caller_may_not_set_are_refused_by_name(usage: dict[str, Any], message: str, field: str) -> None:
    assert refusal(usage) == (422, "invalid_request", message, field)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (["not", "an", "object"], "metadata must be a JSON object"),
        ({"ratio": float("nan")}, "metadata must be a JSON object"),
        ({"when": object()}, "metadata must be a JSON object"),
        ({"note": "a\x00b"}, "metadata must not contain NUL characters"),
    ],
)
def test_metadata_is_a_json_object_postgresql_can_store(metadata: Any, message: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        check_metadata(metadata)
    assert (caught.value.status, caught.value.message, caught.value.field) == (422, message, "metadata")


def test_metadata_may_be_absent_or_any_json_object() -> None:
    assert (check_metadata(None), check_metadata({"plan": "pro", "seats": [1, 2]})) == (
        None,
        {"plan": "pro", "seats": [1, 2]},
    )


@pytest.mark.parametrize(
    ("value", "positive", "message"),
    [
        (True, True, "amount must be an integer number of microcredits"),
        ("5", False, "amount must be an integer number of microcredits"),
        (5.0, True, "amount must be an integer number of microcredits"),
        (0, True, "amount must be greater than 0"),
        (-1, False, "amount must be 0 or more"),
        (10**15 + 1, False, "amount must be at most 1000000000000000"),
    ],
)
def test_an_amount_is_an_integer_within_its_bounds(value: Any, positive: bool, message: str) -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        check_amount(value, positive=positive)
    assert (caught.value.status, caught.value.message, caught.value.field) == (422, message, "amount_microcredits")


def test_an_amount_takes_its_bounds() -> None:
    assert (check_amount(0, positive=False), check_amount(1, positive=True), check_amount(10**15, positive=True)) == (
        0,
        1,
        10**15,
    )


def _refusal(check: Any, *args: Any) -> tuple[int, str, str | None]:
    with pytest.raises(DowncityHTTPError) as refused:
        check(*args)
    return refused.value.status, refused.value.message, refused.value.field


@pytest.mark.parametrize("value", ["", None, 7])
def test_an_account_id_is_a_non_empty_string_naming_user_id(value: Any) -> None:
    assert _refusal(check_account, value) == (422, "user_id must be a non-empty string", "user_id")


def test_an_account_id_is_storable_and_at_most_its_length() -> None:
    assert check_account("a" * MAX_ACCOUNT_ID_CHARS) == "a" * MAX_ACCOUNT_ID_CHARS
    too_long = (422, f"user_id must be at most {MAX_ACCOUNT_ID_CHARS} characters", "user_id")
    assert _refusal(check_account, "a" * (MAX_ACCOUNT_ID_CHARS + 1)) == too_long
    assert _refusal(check_account, "a\x00b") == (422, "user_id must not contain NUL characters", "user_id")


def test_a_key_is_a_non_empty_string_of_at_most_200_characters_naming_its_field() -> None:
    assert check_text("k" * 200, "idempotency_key") == "k" * 200
    too_long = (422, "idempotency_key must be at most 200 characters", "idempotency_key")
    assert _refusal(check_text, "k" * 201, "idempotency_key") == too_long
    assert _refusal(check_text, "k\x00", "ref") == (422, "ref must not contain NUL characters", "ref")


def test_an_optional_text_is_none_or_a_storable_string_of_its_length() -> None:
    assert (check_optional_text(None, "note"), check_optional_text("hi", "note", 2)) == (None, "hi")
    assert _refusal(check_optional_text, 3, "note") == (422, "note must be a string", "note")
    assert _refusal(check_optional_text, "hi!", "note", 2) == (422, "note must be at most 2 characters", "note")
    assert check_optional_text("x" * 10_000, "note") == "x" * 10_000
