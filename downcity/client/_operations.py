"""Every endpoint once: the request it sends and how its response parses, for both client flavours."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, TypeAdapter

from downcity.client._base import Operation, RequestSpec
from downcity.client._models import (
    Balance,
    City,
    EnvEntry,
    ImageJob,
    IssuedToken,
    Job,
    LedgerEntry,
    Model,
    QuotaInfo,
    QuotaListing,
    UsageRecord,
    UsageSummaryRow,
    ui_message,
)
from downcity.types import UIMessage

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Messages = Sequence[UIMessage | Mapping[str, Any]]


def _without_none(values: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def _get(path: str, parse: Callable[[Any], T], params: Mapping[str, Any] | None = None) -> Operation[T]:
    return Operation(RequestSpec("GET", path, params=_without_none(params or {})), parse)


def _post(
    path: str,
    parse: Callable[[Any], T],
    body: Mapping[str, Any],
    *,
    retry_safe: bool = False,
    idempotency_key: str | None = None,
) -> Operation[T]:
    return Operation(_post_spec(path, body, retry_safe=retry_safe, idempotency_key=idempotency_key), parse)


def _post_spec(
    path: str, body: Mapping[str, Any], *, retry_safe: bool = False, idempotency_key: str | None = None
) -> RequestSpec:
    # The server replays a keyed request instead of running it twice, so a keyed POST is safe to repeat.
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return RequestSpec(
        "POST",
        path,
        json=_without_none(body),
        headers=headers,
        retry_safe=retry_safe or idempotency_key is not None,
    )


def _items(model: type[M]) -> Callable[[Any], list[M]]:
    def parse(body: Any) -> list[M]:
        return [model.model_validate(item) for item in body["items"]]

    return parse


def _field(name: str, kind: type[T]) -> Callable[[Any], T]:
    adapter = TypeAdapter(kind)

    def parse(body: Any) -> T:
        return adapter.validate_python(body[name], strict=True)

    return parse


def _message(body: Any) -> UIMessage:
    return UIMessage.model_validate(ui_message(body))


def _ai_body(
    prompt: str | None, messages: Messages | None, model: str | None, extra: Mapping[str, Any]
) -> dict[str, Any]:
    wire_messages = None
    if messages is not None:
        wire_messages = [
            m.model_dump(mode="json", by_alias=True) if isinstance(m, UIMessage) else dict(m) for m in messages
        ]
    return {**extra, **_without_none({"model": model, "prompt": prompt, "messages": wire_messages})}


def models() -> Operation[list[Model]]:
    """GET /v1/ai/models."""
    return _get("/v1/ai/models", _items(Model))


def text(
    prompt: str | None,
    messages: Messages | None,
    model: str | None,
    idempotency_key: str | None,
    extra: Mapping[str, Any],
) -> Operation[UIMessage]:
    """POST /v1/ai/text."""
    body = _ai_body(prompt, messages, model, extra)
    return _post("/v1/ai/text", _message, body, idempotency_key=idempotency_key)


def stream(
    prompt: str | None,
    messages: Messages | None,
    model: str | None,
    idempotency_key: str | None,
    extra: Mapping[str, Any],
) -> RequestSpec:
    """POST /v1/ai/stream."""
    body = _ai_body(prompt, messages, model, extra)
    return _post_spec("/v1/ai/stream", body, idempotency_key=idempotency_key)


def image_create(
    prompt: str, model: str | None, idempotency_key: str | None, extra: Mapping[str, Any]
) -> Operation[ImageJob]:
    """POST /v1/ai/image/create."""
    body = {**extra, **_without_none({"model": model, "prompt": prompt})}
    return _post("/v1/ai/image/create", ImageJob.model_validate, body, idempotency_key=idempotency_key)


def image_result(job_id: str) -> Operation[ImageJob]:
    """POST /v1/ai/image/result (a read, so safe to retry)."""
    return _post("/v1/ai/image/result", ImageJob.model_validate, {"job_id": job_id}, retry_safe=True)


def my_balance() -> Operation[Balance]:
    """GET /v1/balance/me."""
    return _get("/v1/balance/me", Balance.model_validate)


def my_usage(filters: Mapping[str, Any]) -> Operation[list[UsageRecord]]:
    """GET /v1/usage/me."""
    return _get("/v1/usage/me", _items(UsageRecord), filters)


def apply_token(
    city_id: str, user_id: str, metadata: Mapping[str, Any] | None, ttl: int | None
) -> Operation[IssuedToken]:
    """POST /v1/tokens/apply."""
    body = {"city_id": city_id, "user_id": user_id, "metadata": metadata, "ttl": ttl}
    return _post("/v1/tokens/apply", IssuedToken.model_validate, body)


def revoke_tokens(token_id: str | None, user_id: str | None, city_id: str | None) -> Operation[int]:
    """POST /v1/tokens/revoke."""
    body = {"token_id": token_id, "user_id": user_id, "city_id": city_id}
    return _post("/v1/tokens/revoke", _field("revoked", int), body, retry_safe=True)


def create_city(name: str, city_id: str | None) -> Operation[City]:
    """POST /v1/cities/create."""
    return _post("/v1/cities/create", City.model_validate, {"name": name, "city_id": city_id})


def list_cities() -> Operation[list[City]]:
    """GET /v1/cities/list."""
    return _get("/v1/cities/list", _items(City))


def set_city_status(city_id: str, action: Literal["pause", "activate"]) -> Operation[City]:
    """POST /v1/cities/pause or /v1/cities/activate."""
    return _post(f"/v1/cities/{action}", City.model_validate, {"city_id": city_id}, retry_safe=True)


def set_env(key: str, value: str) -> Operation[EnvEntry]:
    """POST /v1/env/set."""
    return _post("/v1/env/set", EnvEntry.model_validate, {"key": key, "value": value}, retry_safe=True)


def list_env() -> Operation[list[EnvEntry]]:
    """GET /v1/env/list."""
    return _get("/v1/env/list", _items(EnvEntry))


def remove_env(key: str) -> Operation[bool]:
    """POST /v1/env/remove."""
    return _post("/v1/env/remove", _field("removed", bool), {"key": key}, retry_safe=True)


def change_balance(
    action: Literal["credit", "debit"],
    city_id: str,
    user_id: str,
    amount_microcredits: int,
    idempotency_key: str,
    note: str | None,
) -> Operation[LedgerEntry]:
    """POST /v1/balance/credit or /v1/balance/debit; the body's idempotency key makes retries safe."""
    body = {
        "city_id": city_id,
        "user_id": user_id,
        "amount_microcredits": amount_microcredits,
        "idempotency_key": idempotency_key,
        "note": note,
    }
    return _post(f"/v1/balance/{action}", LedgerEntry.model_validate, body, retry_safe=True)


def get_balance(city_id: str, user_id: str) -> Operation[Balance]:
    """GET /v1/balance/get."""
    return _get("/v1/balance/get", Balance.model_validate, {"city_id": city_id, "user_id": user_id})


def balance_history(city_id: str, user_id: str, limit: int) -> Operation[list[LedgerEntry]]:
    """GET /v1/balance/history."""
    query = {"city_id": city_id, "user_id": user_id, "limit": limit}
    return _get("/v1/balance/history", _items(LedgerEntry), query)


def list_usage(filters: Mapping[str, Any]) -> Operation[list[UsageRecord]]:
    """GET /v1/usage/list."""
    return _get("/v1/usage/list", _items(UsageRecord), filters)


def usage_summary(filters: Mapping[str, Any]) -> Operation[list[UsageSummaryRow]]:
    """GET /v1/usage/summary."""
    return _get("/v1/usage/summary", _items(UsageSummaryRow), filters)


def list_jobs(filters: Mapping[str, Any]) -> Operation[list[Job]]:
    """GET /v1/jobs/list."""
    return _get("/v1/jobs/list", _items(Job), filters)


def set_quota(
    city_id: str,
    quota_id: str,
    *,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    credits_per_day: int | None,
    credits_per_month: int | None,
    user_id: str | None,
    metadata: Mapping[str, Any] | None,
    model: str | None,
    per_user: bool,
) -> Operation[QuotaInfo]:
    """POST /v1/quotas/set; setting the same quota twice stores it once."""
    spec = {
        "city_id": city_id,
        "id": quota_id,
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "credits_per_day": credits_per_day,
        "credits_per_month": credits_per_month,
        "user_id": user_id,
        "metadata": dict(metadata) if metadata else None,
        "model": model,
        "per_user": per_user,
    }
    return _post("/v1/quotas/set", QuotaInfo.model_validate, spec, retry_safe=True)


def list_quotas(city_id: str | None) -> Operation[QuotaListing]:
    """GET /v1/quotas/list."""
    return _get("/v1/quotas/list", QuotaListing.model_validate, {"city_id": city_id})


def remove_quota(city_id: str, quota_id: str) -> Operation[bool]:
    """POST /v1/quotas/remove."""
    return _post("/v1/quotas/remove", _field("removed", bool), {"city_id": city_id, "id": quota_id}, retry_safe=True)
