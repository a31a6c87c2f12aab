"""Balance routes: the caller's own balance, and admin credit / debit / get / history of one account.

An account is (city_id, user_id), or the user's account in the space a city shares (see `downcity.accounts`);
every response names the city, the user and the account id the Ledger keeps.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from downcity.cities import CITY_ID_PATTERN
from downcity.errors import DowncityHTTPError
from downcity.http.deps import AdminDep, CallerDep, RuntimeDep
from downcity.ledger import Balance, LedgerEntry
from downcity.runtime import Runtime
from downcity.settings import MAX_AMOUNT_MICROCREDITS, MAX_BALANCE_MICROCREDITS, MAX_ENTRY_ID

router = APIRouter(prefix="/v1/balance")


class BalanceChange(BaseModel):
    """Body of `/v1/balance/credit` and `/v1/balance/debit`."""

    city_id: str = Field(pattern=CITY_ID_PATTERN.pattern)
    user_id: str = Field(min_length=1, max_length=200)
    amount_microcredits: int = Field(gt=0, le=MAX_AMOUNT_MICROCREDITS, strict=True)
    idempotency_key: str = Field(min_length=1, max_length=180)
    note: str | None = Field(default=None, max_length=1000)


CityQuery = Annotated[str, Query(pattern=CITY_ID_PATTERN.pattern)]
UserQuery = Annotated[str, Query(min_length=1, max_length=200)]


def _account(runtime: Runtime, city_id: str, user_id: str) -> str:
    return runtime.federation.accounts.account_id(city_id, user_id)


def _balance(balance: Balance, city_id: str, user_id: str) -> dict[str, Any]:
    return {**balance.model_dump(), "city_id": city_id, "user_id": user_id, "account_id": balance.user_id}


def _entry(entry: LedgerEntry, city_id: str, user_id: str) -> dict[str, Any]:
    return {**entry.model_dump(), "city_id": city_id, "user_id": user_id, "account_id": entry.user_id}


@router.get("/me")
async def my_balance(runtime: RuntimeDep, caller: CallerDep) -> dict[str, Any]:
    """The caller's balance, held amount and what is available."""
    balance = await runtime.ledger.balance(_account(runtime, caller.city_id, caller.user_id))
    return _balance(balance, caller.city_id, caller.user_id)


@router.post("/credit")
async def credit(body: BalanceChange, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Top up an account up to the balance cap; replays of the same key return the first entry."""
    account = _account(runtime, body.city_id, body.user_id)
    balance = await runtime.ledger.balance(account)
    if balance.balance + body.amount_microcredits > MAX_BALANCE_MICROCREDITS:
        message = f"a balance may hold at most {MAX_BALANCE_MICROCREDITS} microcredits; this credit would exceed it"
        raise DowncityHTTPError(422, "balance_cap_exceeded", message, "amount_microcredits")
    entry = await runtime.ledger.credit(f"admin:{body.idempotency_key}", account, body.amount_microcredits, body.note)
    return _entry(entry, body.city_id, body.user_id)


@router.post("/debit")
async def debit(body: BalanceChange, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Take credits from an account (402 when the available balance is short)."""
    account = _account(runtime, body.city_id, body.user_id)
    entry = await runtime.ledger.debit(f"admin:{body.idempotency_key}", account, body.amount_microcredits, body.note)
    return _entry(entry, body.city_id, body.user_id)


@router.get("/get")
async def get_balance(city_id: CityQuery, user_id: UserQuery, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """One account's balance."""
    return _balance(await runtime.ledger.balance(_account(runtime, city_id, user_id)), city_id, user_id)


@router.get("/history")
async def history(
    city_id: CityQuery,
    user_id: UserQuery,
    runtime: RuntimeDep,
    _: AdminDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before_id: Annotated[int | None, Query(ge=1, le=MAX_ENTRY_ID)] = None,
) -> dict[str, Any]:
    """An account's ledger entries, newest first."""
    entries = await runtime.ledger.history(_account(runtime, city_id, user_id), limit=limit, before_id=before_id)
    return {"items": [_entry(entry, city_id, user_id) for entry in entries]}
