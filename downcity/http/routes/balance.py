"""Balance routes: the caller's own balance, and admin credit / debit / get / history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from downcity.errors import DowncityHTTPError
from downcity.http.deps import AdminDep, CallerDep, RuntimeDep
from downcity.settings import MAX_AMOUNT_MICROCREDITS, MAX_BALANCE_MICROCREDITS, MAX_ENTRY_ID

router = APIRouter(prefix="/v1/balance")


class BalanceChange(BaseModel):
    """Body of `/v1/balance/credit` and `/v1/balance/debit`."""

    user_id: str = Field(min_length=1, max_length=200)
    amount_microcredits: int = Field(gt=0, le=MAX_AMOUNT_MICROCREDITS, strict=True)
    idempotency_key: str = Field(min_length=1, max_length=180)
    note: str | None = Field(default=None, max_length=1000)


UserQuery = Annotated[str, Query(min_length=1, max_length=200)]


@router.get("/me")
async def my_balance(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's balance, held amount and what is available."""
    return (await runtime.ledger.balance(caller.user_id)).model_dump()


@router.post("/credit")
async def credit(body: BalanceChange, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Top up a user up to the balance cap; replays of the same key return the first entry."""
    balance = await runtime.ledger.balance(body.user_id)
    if balance.balance + body.amount_microcredits > MAX_BALANCE_MICROCREDITS:
        message = f"a balance may hold at most {MAX_BALANCE_MICROCREDITS} microcredits; this credit would exceed it"
        raise DowncityHTTPError(422, "balance_cap_exceeded", message, "amount_microcredits")
    entry = await runtime.ledger.credit(
        f"admin:{body.idempotency_key}", body.user_id, body.amount_microcredits, note=body.note
    )
    return entry.model_dump()


@router.post("/debit")
async def debit(body: BalanceChange, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Take credits from a user (402 when the available balance is short)."""
    entry = await runtime.ledger.debit(
        f"admin:{body.idempotency_key}", body.user_id, body.amount_microcredits, note=body.note
    )
    return entry.model_dump()


@router.get("/get")
async def get_balance(user_id: UserQuery, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """One user's balance."""
    return (await runtime.ledger.balance(user_id)).model_dump()


@router.get("/history")
async def history(
    user_id: UserQuery,
    runtime: RuntimeDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ENTRY_ID)] = None,
) -> dict[str, Any]:
    """A user's ledger entries, newest first."""
    entries = await runtime.ledger.history(user_id, limit=limit, before_id=before_id)
    return {"items": [entry.model_dump() for entry in entries]}
