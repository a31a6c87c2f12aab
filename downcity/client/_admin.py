"""The admin clients: what a trusted business backend holding the admin key calls."""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from typing import Any, Literal

import httpx

from downcity.client import _operations as ops
from downcity.client._async import AsyncClient, AsyncNamespace
from downcity.client._base import client_headers
from downcity.client._models import (
    Balance,
    City,
    EnvEntry,
    IssuedToken,
    Job,
    LedgerEntry,
    QuotaInfo,
    QuotaListing,
    UsageRecord,
    UsageSummaryRow,
)
from downcity.client._sync import SyncClient, SyncNamespace

# Epoch ms, an ISO-8601 date or time (UTC when naive), or a duration ago such as "24h" or "7d".
TimeFilter = int | str | None
GroupBy = Literal["city", "user", "model", "day"]


def _usage_filters(
    city_id: str | None,
    user_id: str | None,
    model: str | None,
    status: str | None,
    since: TimeFilter,
    until: TimeFilter,
) -> dict[str, Any]:
    return {"city_id": city_id, "user_id": user_id, "model": model, "status": status, "since": since, "until": until}


class TokensResource(SyncNamespace):
    """`admin.tokens`: issue and revoke user tokens."""

    def apply(
        self, *, city_id: str, user_id: str, metadata: Mapping[str, Any] | None = None, ttl: int | None = None
    ) -> IssuedToken:
        """Issue a user token (`ttl` in seconds, default 7 days)."""
        return self._transport.call(ops.apply_token(city_id, user_id, metadata, ttl))

    def revoke(self, token_id: str | None = None, user_id: str | None = None, city_id: str | None = None) -> int:
        """Revoke one token, or every token of a user (optionally in one city); returns how many."""
        return self._transport.call(ops.revoke_tokens(token_id, user_id, city_id))


class CitiesResource(SyncNamespace):
    """`admin.cities`: product boundaries."""

    def create(self, name: str, city_id: str | None = None) -> City:
        """Create an active city."""
        return self._transport.call(ops.create_city(name, city_id))

    def list(self) -> list[City]:
        """Every city."""
        return self._transport.call(ops.list_cities())

    def pause(self, city_id: str) -> City:
        """Refuse the city's calls."""
        return self._transport.call(ops.set_city_status(city_id, "pause"))

    def activate(self, city_id: str) -> City:
        """Serve the city's calls again."""
        return self._transport.call(ops.set_city_status(city_id, "activate"))


class EnvResource(SyncNamespace):
    """`admin.env`: provider keys (values go in, previews come out)."""

    def set(self, key: str, value: str) -> EnvEntry:
        """Set or rotate a provider key."""
        return self._transport.call(ops.set_env(key, value))

    def list(self) -> list[EnvEntry]:
        """Every stored key, previews only."""
        return self._transport.call(ops.list_env())

    def remove(self, key: str) -> bool:
        """Remove a key; False when it was not stored."""
        return self._transport.call(ops.remove_env(key))


class BalanceResource(SyncNamespace):
    """`admin.balance`: credits, debits and ledger history."""

    def credit(
        self, city_id: str, user_id: str, amount_microcredits: int, idempotency_key: str, note: str | None = None
    ) -> LedgerEntry:
        """Top up a user; repeating the key returns the first entry."""
        return self._transport.call(
            ops.change_balance("credit", city_id, user_id, amount_microcredits, idempotency_key, note)
        )

    def debit(
        self, city_id: str, user_id: str, amount_microcredits: int, idempotency_key: str, note: str | None = None
    ) -> LedgerEntry:
        """Take credits from a user (402 `insufficient_balance` when short)."""
        return self._transport.call(
            ops.change_balance("debit", city_id, user_id, amount_microcredits, idempotency_key, note)
        )

    def get(self, city_id: str, user_id: str) -> Balance:
        """One account's balance."""
        return self._transport.call(ops.get_balance(city_id, user_id))

    def history(self, city_id: str, user_id: str, limit: int = 50) -> list[LedgerEntry]:
        """An account's ledger entries, newest first."""
        return self._transport.call(ops.balance_history(city_id, user_id, limit))


class UsageResource(SyncNamespace):
    """`admin.usage`: usage records and totals; `since` is inclusive, `until` exclusive."""

    def list(
        self,
        city_id: str | None = None,
        user_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: TimeFilter = None,
        until: TimeFilter = None,
        limit: int = 100,
    ) -> list[UsageRecord]:
        """Usage records matching every given filter, newest first."""
        filters = _usage_filters(city_id, user_id, model, status, since, until)
        return self._transport.call(ops.list_usage({**filters, "limit": limit}))

    def summary(
        self,
        group_by: GroupBy = "model",
        city_id: str | None = None,
        user_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: TimeFilter = None,
        until: TimeFilter = None,
        limit: int = 100,
    ) -> builtins.list[UsageSummaryRow]:
        """Requests, errors, tokens and credits per group: newest day first, else biggest spenders first."""
        filters = _usage_filters(city_id, user_id, model, status, since, until)
        return self._transport.call(ops.usage_summary({**filters, "group_by": group_by, "limit": limit}))


class JobsResource(SyncNamespace):
    """`admin.jobs`: image jobs across cities."""

    def list(
        self,
        status: str | None = None,
        city_id: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Image jobs matching the filters."""
        filters = {"status": status, "city_id": city_id, "user_id": user_id, "limit": limit}
        return self._transport.call(ops.list_jobs(filters))


class QuotasResource(SyncNamespace):
    """`admin.quotas`: a city's quotas (RPM, TPM, credits per day or month), applied without a redeploy."""

    def set(
        self,
        city_id: str,
        id: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        credits_per_day: int | None = None,
        credits_per_month: int | None = None,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        model: str | None = None,
        per_user: bool = False,
    ) -> QuotaInfo:
        """Store a city's quota, scoped to the user, token metadata values and model given."""
        return self._transport.call(
            ops.set_quota(
                city_id,
                id,
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                credits_per_day=credits_per_day,
                credits_per_month=credits_per_month,
                user_id=user_id,
                metadata=metadata,
                model=model,
                per_user=per_user,
            )
        )

    def list(self, city_id: str | None = None) -> QuotaListing:
        """The quotas in force (declared and stored) and, for one city, each budget's use in its window."""
        return self._transport.call(ops.list_quotas(city_id))

    def remove(self, city_id: str, id: str) -> bool:
        """Remove a city's stored quota; False when it had none of that id."""
        return self._transport.call(ops.remove_quota(city_id, id))


class AdminClient(SyncClient):
    """Blocking admin client."""

    def __init__(
        self,
        url: str,
        *,
        admin_key: str,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(url, client_headers(admin_key), timeout=timeout, retries=retries, transport=transport)
        self.tokens = TokensResource(self._transport)
        self.cities = CitiesResource(self._transport)
        self.env = EnvResource(self._transport)
        self.balance = BalanceResource(self._transport)
        self.usage = UsageResource(self._transport)
        self.jobs = JobsResource(self._transport)
        self.quotas = QuotasResource(self._transport)


class AsyncTokensResource(AsyncNamespace):
    """`admin.tokens`: issue and revoke user tokens."""

    async def apply(
        self, *, city_id: str, user_id: str, metadata: Mapping[str, Any] | None = None, ttl: int | None = None
    ) -> IssuedToken:
        """Issue a user token (`ttl` in seconds, default 7 days)."""
        return await self._transport.call(ops.apply_token(city_id, user_id, metadata, ttl))

    async def revoke(self, token_id: str | None = None, user_id: str | None = None, city_id: str | None = None) -> int:
        """Revoke one token, or every token of a user (optionally in one city); returns how many."""
        return await self._transport.call(ops.revoke_tokens(token_id, user_id, city_id))


class AsyncCitiesResource(AsyncNamespace):
    """`admin.cities`: product boundaries."""

    async def create(self, name: str, city_id: str | None = None) -> City:
        """Create an active city."""
        return await self._transport.call(ops.create_city(name, city_id))

    async def list(self) -> list[City]:
        """Every city."""
        return await self._transport.call(ops.list_cities())

    async def pause(self, city_id: str) -> City:
        """Refuse the city's calls."""
        return await self._transport.call(ops.set_city_status(city_id, "pause"))

    async def activate(self, city_id: str) -> City:
        """Serve the city's calls again."""
        return await self._transport.call(ops.set_city_status(city_id, "activate"))


class AsyncEnvResource(AsyncNamespace):
    """`admin.env`: provider keys (values go in, previews come out)."""

    async def set(self, key: str, value: str) -> EnvEntry:
        """Set or rotate a provider key."""
        return await self._transport.call(ops.set_env(key, value))

    async def list(self) -> list[EnvEntry]:
        """Every stored key, previews only."""
        return await self._transport.call(ops.list_env())

    async def remove(self, key: str) -> bool:
        """Remove a key; False when it was not stored."""
        return await self._transport.call(ops.remove_env(key))


class AsyncBalanceResource(AsyncNamespace):
    """`admin.balance`: credits, debits and ledger history."""

    async def credit(
        self, city_id: str, user_id: str, amount_microcredits: int, idempotency_key: str, note: str | None = None
    ) -> LedgerEntry:
        """Top up a user; repeating the key returns the first entry."""
        return await self._transport.call(
            ops.change_balance("credit", city_id, user_id, amount_microcredits, idempotency_key, note)
        )

    async def debit(
        self, city_id: str, user_id: str, amount_microcredits: int, idempotency_key: str, note: str | None = None
    ) -> LedgerEntry:
        """Take credits from a user (402 `insufficient_balance` when short)."""
        return await self._transport.call(
            ops.change_balance("debit", city_id, user_id, amount_microcredits, idempotency_key, note)
        )

    async def get(self, city_id: str, user_id: str) -> Balance:
        """One account's balance."""
        return await self._transport.call(ops.get_balance(city_id, user_id))

    async def history(self, city_id: str, user_id: str, limit: int = 50) -> list[LedgerEntry]:
        """An account's ledger entries, newest first."""
        return await self._transport.call(ops.balance_history(city_id, user_id, limit))


class AsyncUsageResource(AsyncNamespace):
    """`admin.usage`: usage records and totals; `since` is inclusive, `until` exclusive."""

    async def list(
        self,
        city_id: str | None = None,
        user_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: TimeFilter = None,
        until: TimeFilter = None,
        limit: int = 100,
    ) -> list[UsageRecord]:
        """Usage records matching every given filter, newest first."""
        filters = _usage_filters(city_id, user_id, model, status, since, until)
        return await self._transport.call(ops.list_usage({**filters, "limit": limit}))

    async def summary(
        self,
        group_by: GroupBy = "model",
        city_id: str | None = None,
        user_id: str | None = None,
        model: str | None = None,
        status: str | None = None,
        since: TimeFilter = None,
        until: TimeFilter = None,
        limit: int = 100,
    ) -> builtins.list[UsageSummaryRow]:
        """Requests, errors, tokens and credits per group: newest day first, else biggest spenders first."""
        filters = _usage_filters(city_id, user_id, model, status, since, until)
        return await self._transport.call(ops.usage_summary({**filters, "group_by": group_by, "limit": limit}))


class AsyncJobsResource(AsyncNamespace):
    """`admin.jobs`: image jobs across cities."""

    async def list(
        self,
        status: str | None = None,
        city_id: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """Image jobs matching the filters."""
        filters = {"status": status, "city_id": city_id, "user_id": user_id, "limit": limit}
        return await self._transport.call(ops.list_jobs(filters))


class AsyncQuotasResource(AsyncNamespace):
    """`admin.quotas`: a city's quotas (RPM, TPM, credits per day or month), applied without a redeploy."""

    async def set(
        self,
        city_id: str,
        id: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        credits_per_day: int | None = None,
        credits_per_month: int | None = None,
        user_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        model: str | None = None,
        per_user: bool = False,
    ) -> QuotaInfo:
        """Store a city's quota, scoped to the user, token metadata values and model given."""
        return await self._transport.call(
            ops.set_quota(
                city_id,
                id,
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                credits_per_day=credits_per_day,
                credits_per_month=credits_per_month,
                user_id=user_id,
                metadata=metadata,
                model=model,
                per_user=per_user,
            )
        )

    async def list(self, city_id: str | None = None) -> QuotaListing:
        """The quotas in force (declared and stored) and, for one city, each budget's use in its window."""
        return await self._transport.call(ops.list_quotas(city_id))

    async def remove(self, city_id: str, id: str) -> bool:
        """Remove a city's stored quota; False when it had none of that id."""
        return await self._transport.call(ops.remove_quota(city_id, id))


class AsyncAdminClient(AsyncClient):
    """Asyncio admin client."""

    def __init__(
        self,
        url: str,
        *,
        admin_key: str,
        timeout: float = 30.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(url, client_headers(admin_key), timeout=timeout, retries=retries, transport=transport)
        self.tokens = AsyncTokensResource(self._transport)
        self.cities = AsyncCitiesResource(self._transport)
        self.env = AsyncEnvResource(self._transport)
        self.balance = AsyncBalanceResource(self._transport)
        self.usage = AsyncUsageResource(self._transport)
        self.jobs = AsyncJobsResource(self._transport)
        self.quotas = AsyncQuotasResource(self._transport)
