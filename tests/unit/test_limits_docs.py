"""The limits table in docs/operators/deploy.md states the limits the code enforces."""

from __future__ import annotations

from pathlib import Path

from downcity.auth.keyring import RETIRED_KEY_LIFETIME_MS
from downcity.http.schemas import MAX_TOKENS
from downcity.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_TOKEN_TTL_S,
    MAX_AMOUNT_MICROCREDITS,
    MAX_BALANCE_MICROCREDITS,
    MAX_CLOCK_SKEW_S,
    MAX_ENTRY_ID,
    MAX_TOKEN_TTL_S,
)
from downcity.store.values import MAX_JSON_DEPTH, MAX_JSON_INT, MIN_JSON_INT

DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "operators" / "deploy.md"


def _limits_table() -> dict[str, tuple[str, str]]:
    section = DEPLOY.read_text().split("## Limits on every request", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): (cells[1].strip(), cells[2].strip()) for cells in rows[1:]}


def test_the_documented_limits_are_the_enforced_ones() -> None:
    table = _limits_table()

    assert {name: value for name, (value, _) in table.items()} == {
        "body size": f"{DEFAULT_MAX_BODY_BYTES} bytes (`DOWNCITY_MAX_BODY_BYTES`)",
        "JSON nesting depth": f"{MAX_JSON_DEPTH} levels",
        "strings": "no U+0000, no lone surrogate (U+D800 to U+DFFF)",
        "numbers": "finite: no `NaN`, `Infinity`, `-Infinity` or overflowing literals such as `1e999`",
        "integers": f"{MIN_JSON_INT} to {MAX_JSON_INT} (signed 64-bit)",
        "body syntax": "JSON, with a JSON `content-type`",
        "messages": "typed OpenAI chat or AI SDK UI messages, at least one not `system`/`developer`",
        "`max_tokens`, `max_completion_tokens`": f"1 to {MAX_TOKENS}",
        "token TTL": f"`ttl` 1 to {MAX_TOKEN_TTL_S} s (30 days), default {DEFAULT_TOKEN_TTL_S} s (7 days)",
        "token lifetime": f"a presented token must have `exp - iat` ≤ {MAX_TOKEN_TTL_S} s and `iat` ≤ now + "
        f"{MAX_CLOCK_SKEW_S} s",
        "retired signing key": f"verifies only tokens it signed before retirement, for "
        f"{RETIRED_KEY_LIFETIME_MS // 1000} s after it",
        "credit or debit amount": f"1 to {MAX_AMOUNT_MICROCREDITS} microcredits",
        "balance cap": f"{MAX_BALANCE_MICROCREDITS} microcredits per account",
        "`before_id`": f"1 to {MAX_ENTRY_ID}",
    }


def test_every_limit_names_how_it_is_refused() -> None:
    assert {name: refusal.split(" ", 1)[0] for name, (_, refusal) in _limits_table().items()} == {
        "body size": "413",
        "JSON nesting depth": "422",
        "strings": "422",
        "numbers": "422",
        "integers": "422",
        "body syntax": "400",
        "messages": "422",
        "`max_tokens`, `max_completion_tokens`": "422",
        "token TTL": "422",
        "token lifetime": "401",
        "retired signing key": "401",
        "credit or debit amount": "422",
        "balance cap": "422",
        "`before_id`": "422",
    }
