"""Python a federation YAML file names by import path in tests."""

from __future__ import annotations

from typing import Any

from downcity import ChargeDraft, Context, DowncityHTTPError


def deny_banned(ctx: Context) -> None:
    """Refuse users whose token metadata says they are banned."""
    if ctx.user.metadata.get("banned"):
        raise DowncityHTTPError(403, "banned", "this user is banned")


def half_price(ctx: Context, output: Any) -> ChargeDraft:
    """Half a microcredit per token, rounded up."""
    return ChargeDraft(amount_microcredits=(ctx.metering.usage.total_tokens + 1) // 2, ref=ctx.request_id)
