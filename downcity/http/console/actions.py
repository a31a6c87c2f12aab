"""The console's forms: each calls the JSON admin route's own function, then shows the page with the outcome."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import HTMLResponse

from downcity.errors import DowncityHTTPError, invalid
from downcity.http.console.context import Console, ConsoleDep, Form, problem, read_form
from downcity.http.console.pages import balances_context, cities_context, keys_context, quotas_context
from downcity.http.routes import balance as balance_routes
from downcity.http.routes import cities as city_routes
from downcity.http.routes import env as env_routes
from downcity.http.routes import quotas as quota_routes
from downcity.http.routes import tokens as token_routes

router = APIRouter(prefix="/console", include_in_schema=False)

Loader = Callable[[Form], Awaitable[dict[str, Any]]]


async def _act(
    request: Request,
    console: Console,
    template: str,
    active: str,
    work: Callable[[Form], Awaitable[dict[str, Any]]],
    reload: Loader,
) -> HTMLResponse:
    """Read the form, do `work` (its result joins the page), and show the page; an API error shows its message."""
    form = await read_form(request, console)
    try:
        outcome = await work(form)
    except (DowncityHTTPError, ValidationError) as error:
        return console.failed(template, active, {**await reload(form), "form": form.values}, problem(error))
    return console.page(template, active, {**await reload(form), **outcome, "form": {}})


@router.post("/cities/create", response_class=HTMLResponse)
async def create_city(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Create a city."""

    async def work(form: Form) -> dict[str, Any]:
        body = city_routes.CityCreate(name=form.text("name"), city_id=form.optional("city_id"))
        city = await city_routes.create_city(body, console.runtime, None)
        return {"notice": f"City {city['city_id']} created."}

    return await _act(request, console, "cities.html", "/console/cities", work, _cities(console))


@router.post("/cities/{action}", response_class=HTMLResponse)
async def change_city(action: str, request: Request, console: ConsoleDep) -> HTMLResponse:
    """Pause or activate a city."""
    change = {"pause": city_routes.pause_city, "activate": city_routes.activate_city}.get(action)

    async def work(form: Form) -> dict[str, Any]:
        if change is None:
            raise DowncityHTTPError(404, "not_found", f"no city action {action!r}")
        city = await change(city_routes.CityRef(city_id=form.text("city_id")), console.runtime, None)
        return {"notice": f"City {city['city_id']} is {city['status']}."}

    return await _act(request, console, "cities.html", "/console/cities", work, _cities(console))


def _cities(console: Console) -> Loader:
    async def load(_: Form) -> dict[str, Any]:
        return await cities_context(console.runtime)

    return load


def _metadata(form: Form) -> Any:
    text = form.optional("metadata")
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise invalid("metadata must be a JSON object", "metadata") from None


@router.post("/tokens/issue", response_class=HTMLResponse)
async def issue_token(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Issue a token; it is shown on this response only."""

    async def work(form: Form) -> dict[str, Any]:
        ttl = form.optional("ttl")
        body = token_routes.TokenApply(
            city_id=form.text("city_id"),
            user_id=form.text("user_id"),
            metadata=_metadata(form),
            ttl=int(ttl) if ttl and ttl.isdigit() else ttl,
        )
        issued = await token_routes.apply_token(body, console.runtime, None)
        return {"issued": issued, "metadata": body.metadata}

    return await _act(request, console, "tokens.html", "/console/tokens", work, _cities(console))


@router.post("/tokens/revoke", response_class=HTMLResponse)
async def revoke_token(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Revoke one token by id, or every token of a user (in one city or all)."""

    async def work(form: Form) -> dict[str, Any]:
        token_id = form.optional("token_id")
        user_id = None if token_id else form.optional("user_id")
        city_id = form.optional("city_id") if user_id else None
        body = token_routes.TokenRevoke(token_id=token_id, user_id=user_id, city_id=city_id)
        await token_routes.revoke_token(body, console.runtime, None)
        target = (
            f"token {token_id}" if token_id else f"every token of {user_id}" + (f" in {city_id}" if city_id else "")
        )
        return {"notice": f"Revoked {target}."}

    return await _act(request, console, "tokens.html", "/console/tokens", work, _cities(console))


def _keys(console: Console) -> Loader:
    async def load(_: Form) -> dict[str, Any]:
        return await keys_context(console.runtime)

    return load


@router.post("/keys/set", response_class=HTMLResponse)
async def set_key(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Set or rotate a provider key; only its preview comes back."""

    async def work(form: Form) -> dict[str, Any]:
        body = env_routes.EnvSet(key=form.text("key"), value=form.text("value"))
        entry = await env_routes.set_env(body, console.runtime, None)
        return {"notice": f"{entry['key']} stored ({entry['preview']})."}

    return await _act(request, console, "keys.html", "/console/keys", work, _keys(console))


@router.post("/keys/remove", response_class=HTMLResponse)
async def remove_key(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Remove a stored provider key."""

    async def work(form: Form) -> dict[str, Any]:
        key = form.text("key")
        removed = await env_routes.remove_env(env_routes.EnvRemove(key=key), console.runtime, None)
        return {"notice": f"{key} removed." if removed["removed"] else f"{key} was not stored."}

    return await _act(request, console, "keys.html", "/console/keys", work, _keys(console))


@router.post("/balances/change", response_class=HTMLResponse)
async def change_balance(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Credit or debit an account; the form's idempotency key makes a replayed submit return the first entry."""

    async def work(form: Form) -> dict[str, Any]:
        direction = form.text("direction")
        change = {"credit": balance_routes.credit, "debit": balance_routes.debit}.get(direction)
        if change is None:
            raise invalid("direction must be credit or debit", "direction")
        body = balance_routes.BalanceChange(
            city_id=form.text("city_id"),
            user_id=form.text("user_id"),
            amount_microcredits=form.integer("amount_microcredits"),
            idempotency_key=form.text("idempotency_key"),
            note=form.optional("note"),
        )
        entry = await change(body, console.runtime, None)
        return {"entry": entry}

    async def load(form: Form) -> dict[str, Any]:
        city_id, user_id = form.optional("city_id"), form.optional("user_id")
        try:
            return await balances_context(console.runtime, city_id, user_id)
        except DowncityHTTPError:
            return await balances_context(console.runtime, None, None)

    return await _act(request, console, "balances.html", "/console/balances", work, load)


def _quotas(console: Console) -> Loader:
    async def load(form: Form) -> dict[str, Any]:
        return await quotas_context(console.runtime, form.optional("city_id"))

    return load


def _limit(form: Form, name: str) -> int | None:
    value = form.optional(name)
    if value is None:
        return None
    if not value.isdigit():
        raise invalid(f"{name} must be a whole number", name)
    return int(value)


@router.post("/quotas/set", response_class=HTMLResponse)
async def set_quota(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Store a city's quota (replacing one of the same id)."""

    async def work(form: Form) -> dict[str, Any]:
        body = quota_routes.QuotaSet(
            city_id=form.text("city_id"),
            id=form.text("id"),
            user_id=form.optional("user_id"),
            metadata=_metadata(form) or {},
            model=form.optional("model"),
            per_user=form.optional("per_user") is not None,
            requests_per_minute=_limit(form, "requests_per_minute"),
            tokens_per_minute=_limit(form, "tokens_per_minute"),
            credits_per_day=_limit(form, "credits_per_day"),
            credits_per_month=_limit(form, "credits_per_month"),
        )
        quota = await quota_routes.set_quota(body, console.runtime, None)
        return {"notice": f"Quota {quota['id']} of {quota['city_id']} set."}

    return await _act(request, console, "quotas.html", "/console/quotas", work, _quotas(console))


@router.post("/quotas/remove", response_class=HTMLResponse)
async def remove_quota(request: Request, console: ConsoleDep) -> HTMLResponse:
    """Remove a city's stored quota."""

    async def work(form: Form) -> dict[str, Any]:
        body = quota_routes.QuotaRef(city_id=form.text("city_id"), id=form.text("id"))
        removed = (await quota_routes.remove_quota(body, console.runtime, None))["removed"]
        if not removed:
            raise DowncityHTTPError(404, "not_found", f"{body.city_id} has no stored quota {body.id!r}")
        return {"notice": f"Quota {body.id} of {body.city_id} removed."}

    return await _act(request, console, "quotas.html", "/console/quotas", work, _quotas(console))
