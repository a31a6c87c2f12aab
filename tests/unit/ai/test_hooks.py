"""Hook order (an onion across federation, service and model), denial, input rewriting and on_error."""

from __future__ import annotations

import pytest

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.hooks import HookFn, run_after, run_before, run_on_error
from downcity.ai.provider import ModelConfig, Provider
from downcity.ai.service import AIService
from downcity.errors import DowncityHTTPError


class Echo(Provider):
    async def text(self, ctx: Context) -> dict[str, str]:
        return {"output": "echo"}


def _setup() -> tuple[Federation, AIService, ModelConfig, Context]:
    model = Echo("echo").model("m")
    service = AIService()
    federation = Federation().use(service.use(model))
    ctx = Context(
        input={"prompt": "hi"},
        user=UserInfo(user_id="u1"),
        city=CityInfo(city_id="c1"),
        model=model,
        pathway="text",
        request_id="req_1",
    )
    return federation, service, model, ctx


def _recorder(log: list[str], name: str) -> HookFn:
    def hook(ctx: Context) -> None:
        log.append(name)

    return hook


def _register_all(log: list[str], federation: Federation, service: AIService, model: ModelConfig) -> None:
    for level, host in (("federation", federation), ("service", service), ("model", model)):
        host.before(_recorder(log, f"before:{level}"))
        host.after(_recorder(log, f"after:{level}"))
        host.on_error(_recorder(log, f"on_error:{level}"))


async def test_before_runs_federation_then_service_then_model() -> None:
    federation, service, model, ctx = _setup()
    log: list[str] = []
    _register_all(log, federation, service, model)
    await run_before(ctx, federation.hook_chain(model))
    assert log == ["before:federation", "before:service", "before:model"]


async def test_after_runs_model_then_service_then_federation() -> None:
    federation, service, model, ctx = _setup()
    log: list[str] = []
    _register_all(log, federation, service, model)
    await run_after(ctx, federation.hook_chain(model))
    assert log == ["after:model", "after:service", "after:federation"]


async def test_on_error_runs_model_then_service_then_federation() -> None:
    federation, service, model, ctx = _setup()
    log: list[str] = []
    _register_all(log, federation, service, model)
    ctx.error = DowncityHTTPError(502, "upstream_error", "boom")
    await run_on_error(ctx, federation.hook_chain(model))
    assert log == ["on_error:model", "on_error:service", "on_error:federation"]


async def test_hooks_in_one_level_run_in_registration_order() -> None:
    federation, _, model, ctx = _setup()
    log: list[str] = []
    federation.before(_recorder(log, "first"))
    federation.before(_recorder(log, "second"))
    await run_before(ctx, federation.hook_chain(model))
    assert log == ["first", "second"]


async def test_a_before_hook_denies_by_raising_and_stops_the_chain() -> None:
    federation, service, model, ctx = _setup()
    log: list[str] = []

    @federation.before
    def quota(ctx: Context) -> None:
        raise DowncityHTTPError(429, "rate_limited", "daily quota reached")

    service.before(_recorder(log, "service"))
    with pytest.raises(DowncityHTTPError) as caught:
        await run_before(ctx, federation.hook_chain(model))
    assert (caught.value.status, log) == (429, [])


async def test_an_async_before_hook_rewrites_the_input_for_later_hooks() -> None:
    federation, _, model, ctx = _setup()
    seen: list[str] = []

    @federation.before
    async def prefix(ctx: Context) -> None:
        ctx.input["prompt"] = "[pro] " + ctx.input["prompt"]
        ctx.locals["plan"] = "pro"

    @model.before
    def read(ctx: Context) -> None:
        seen.append(f"{ctx.input['prompt']}|{ctx.locals['plan']}")

    await run_before(ctx, federation.hook_chain(model))
    assert seen == ["[pro] hi|pro"]


async def test_a_failing_on_error_hook_does_not_stop_the_others_or_replace_the_error() -> None:
    federation, _, model, ctx = _setup()
    log: list[str] = []
    error = DowncityHTTPError(502, "upstream_error", "boom")
    ctx.error = error

    @model.on_error
    def broken(ctx: Context) -> None:
        raise RuntimeError("hook bug")

    federation.on_error(_recorder(log, "federation"))
    await run_on_error(ctx, federation.hook_chain(model))
    assert (log, ctx.error) == (["federation"], error)


def test_hook_chain_of_an_unmounted_model_is_an_error() -> None:
    federation, _, _, _ = _setup()
    with pytest.raises(ValueError, match="not mounted"):
        federation.hook_chain(Echo("other").model("stray"))
