"""Billing priority: the action's charge, then the model's bill, then the provider's bill, then none."""

from __future__ import annotations

from typing import Any

import pytest

from downcity.ai.context import CityInfo, Context, UserInfo
from downcity.ai.pricing import Price
from downcity.ai.provider import ModelConfig, Provider
from downcity.calls.charge import resolve_charge
from downcity.errors import DowncityHTTPError
from downcity.types import ChargeDraft, FilePart, TextPart, UIMessage

HOLD = 1_000


class Plain(Provider):
    async def text(self, ctx: Context) -> dict[str, Any]:
        return {"output": "ok"}


class Billed(Plain):
    def bill(self, ctx: Context, output: Any) -> ChargeDraft:
        return ChargeDraft(amount_microcredits=300, note=f"provider:{output}")


def _model_bill(ctx: Context, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=200, user_id=ctx.user.user_id, note=f"model:{output}")


def _ctx(model: ModelConfig) -> Context:
    return Context(
        input={},
        user=UserInfo(user_id="u1"),
        city=CityInfo(city_id="c1"),
        model=model,
        pathway="text",
        request_id="req_1",
    )


def _resolve(action: ChargeDraft | None, model: ModelConfig) -> ChargeDraft | None:
    return resolve_charge(action, model, model.provider, _ctx(model), "out")


def test_the_action_charge_wins() -> None:
    model = Billed("billed").model("m", bill=_model_bill, hold_microcredits=HOLD)
    action = ChargeDraft(amount_microcredits=100)
    assert _resolve(action, model) == action


def test_the_model_bill_comes_before_the_provider_bill() -> None:
    model = Billed("billed").model("m", bill=_model_bill, hold_microcredits=HOLD)
    assert _resolve(None, model) == ChargeDraft(amount_microcredits=200, user_id="u1", note="model:out")


def test_the_provider_bill_applies_without_action_or_model_charge() -> None:
    model = Billed("billed").model("m", hold_microcredits=HOLD)
    assert _resolve(None, model) == ChargeDraft(amount_microcredits=300, note="provider:out")


def test_no_charge_without_any_bill() -> None:
    assert _resolve(None, Plain("plain").model("m")) is None


def test_a_model_bill_returning_none_defers_to_the_provider_bill() -> None:
    model = Billed("billed").model("m", bill=lambda ctx, output: None, hold_microcredits=HOLD)
    assert _resolve(None, model) == ChargeDraft(amount_microcredits=300, note="provider:out")


def test_a_dict_from_a_bill_becomes_a_charge_draft() -> None:
    model = Plain("plain").model(
        "m", bill=lambda ctx, output: {"amount_microcredits": 7, "ref": "r1"}, hold_microcredits=HOLD
    )
    assert _resolve(None, model) == ChargeDraft(amount_microcredits=7, ref="r1")


def test_an_invalid_bill_result_is_a_502() -> None:
    model = Plain("plain").model("m", bill=lambda ctx, output: {"amount_microcredits": -1}, hold_microcredits=HOLD)
    with pytest.raises(DowncityHTTPError) as caught:
        _resolve(None, model)
    assert (caught.value.status, caught.value.type, caught.value.message) == (
        502,
        "provider_error",
        "the bill of model 'm' returned an invalid charge",
    )


def test_an_invalid_provider_bill_result_is_a_502_naming_the_provider() -> None:
    class BadBill(Plain):
        def bill(self, ctx: Context, output: Any) -> Any:
            return {"amount_microcredits": "lots"}

    with pytest.raises(DowncityHTTPError) as caught:
        _resolve(None, BadBill("bad").model("m", hold_microcredits=HOLD))
    assert (caught.value.status, caught.value.type, caught.value.message) == (
        502,
        "provider_error",
        "the bill of provider 'bad' returned an invalid charge",
    )


def test_the_provider_bill_sees_the_calls_context() -> None:
    class PerUser(Plain):
        def bill(self, ctx: Context, output: Any) -> ChargeDraft:
            return ChargeDraft(amount_microcredits=len(ctx.user.user_id), user_id=ctx.user.user_id)

    assert _resolve(None, PerUser("per-user").model("m", hold_microcredits=HOLD)) == ChargeDraft(
        amount_microcredits=2, user_id="u1"
    )


def test_a_per_image_price_charges_the_images_in_the_output() -> None:
    model = Plain("plain").model("m", price=Price(per_image=20_000))
    images = [FilePart(media_type="image/png", url=f"data:image/png;base64,{n}") for n in range(3)]
    output = UIMessage(id="m1", role="assistant", parts=[TextPart(text="three cats"), *images])
    charge = resolve_charge(None, model, model.provider, _ctx(model), output)
    assert charge is not None and charge.amount_microcredits == 60_000
