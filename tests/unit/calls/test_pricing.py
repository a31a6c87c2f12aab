"""A priced model's derived hold and its place in the billing priority, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from downcity.ai import Context, Metering, Provider
from downcity.ai.context import CityInfo, UserInfo
from downcity.ai.pricing import Price
from downcity.calls.charge import resolve_priced_charge
from downcity.calls.metering import count_prompt_tokens
from downcity.calls.pricing import derived_hold, estimate, hold_of
from downcity.errors import DowncityHTTPError
from downcity.types import ChargeDraft, Usage

PRICE = Price(input=2_000_000, cached_input=1_000_000, output=8_000_000, reasoning=12_000_000, per_request=3)


class Text(Provider):
    async def text(self, ctx: Context) -> dict[str, Any]:
        return {"output": "ok"}


class Billed(Text):
    def bill(self, ctx: Context, output: Any) -> ChargeDraft:
        return ChargeDraft(amount_microcredits=11)


def _ctx(model: Any, usage: Usage) -> Context:
    return Context(
        input={},
        user=UserInfo(user_id="u"),
        city=CityInfo(city_id="c"),
        model=model,
        pathway="text",
        request_id="req_1",
        metering=Metering(usage=usage),
    )


def test_a_priced_model_is_billable_without_a_bill_or_a_hold() -> None:
    model = Text("p").model("m", price=PRICE, max_output_tokens=100)
    assert (model.billable, model.hold_microcredits, model.bill) == (True, None, None)


def test_a_model_inherits_its_providers_default_price() -> None:
    model = Text("p", price={"input": 1_000_000}).model("m")
    assert model.effective_price == Price(input=1_000_000)


def test_a_free_price_makes_no_model_billable() -> None:
    assert Text("p").model("m", price=Price()).billable is False


def test_the_hold_is_the_prompt_with_headroom_plus_max_tokens_at_the_dearest_rates() -> None:
    model = Text("p").model("m", price=PRICE, max_output_tokens=1_000)
    body = {"prompt": "How many tokens is this prompt?", "max_tokens": 50}
    prompt = -(-count_prompt_tokens(body, "m") * 5 // 4)
    assert hold_of(model, body) == -(-(prompt * 2_000_000 + 50 * 12_000_000) // 1_000_000) + 3


def test_max_tokens_is_capped_by_the_models_output_cap() -> None:
    model = Text("p").model("m", price=Price(output=1_000_000), max_output_tokens=64)
    assert estimate(model, {"prompt": "x", "max_tokens": 10_000}).output_tokens == 64
    assert hold_of(model, {"prompt": "x", "max_tokens": 10_000}) == 64


def test_without_max_tokens_the_output_cap_bounds_the_hold() -> None:
    model = Text("p").model("m", price=Price(output=1_000_000), max_output_tokens=256)
    assert hold_of(model, {"prompt": "x"}) == 256


def test_an_unbounded_output_is_refused_naming_max_tokens() -> None:
    model = Text("p").model("m", price=Price(output=1_000_000))
    with pytest.raises(DowncityHTTPError) as refused:
        hold_of(model, {"prompt": "x"})
    assert (refused.value.status, refused.value.field) == (422, "max_tokens")


def test_per_image_holds_every_image_asked_for() -> None:
    model = Text("p").model("m", price=Price(per_image=20_000))
    assert [derived_hold(model, Price(per_image=20_000), {"prompt": "x", "count": n}) for n in (1, 3)] == [
        20_000,
        60_000,
    ]


def test_per_second_needs_a_duration() -> None:
    model = Text("p").model("m", price=Price(per_second=100))
    assert hold_of(model, {"prompt": "x", "duration_s": 4}) == 400
    with pytest.raises(DowncityHTTPError) as refused:
        hold_of(model, {"prompt": "x"})
    assert refused.value.field == "duration_s"


def test_a_hand_set_hold_wins_over_the_derived_one() -> None:
    model = Text("p").model("m", price=PRICE, hold_microcredits=999)
    assert hold_of(model, {"prompt": "x"}) == 999


def test_the_price_charges_per_class_and_records_each_classes_cost() -> None:
    model = Text("p").model("m", price=PRICE, max_output_tokens=100)
    usage = Usage(input_tokens=10, cached_tokens=4, output_tokens=7, reasoning_tokens=2)
    resolved = resolve_priced_charge(None, model, model.provider, _ctx(model, usage), None)
    assert resolved.draft is not None
    assert resolved.draft.amount_microcredits == 6 * 2 + 4 * 1 + 5 * 8 + 2 * 12 + 3
    assert {k: v for k, v in resolved.classes.items() if v} == {
        "input": 12_000_000,
        "cached_input": 4_000_000,
        "output": 40_000_000,
        "reasoning": 24_000_000,
        "request": 3_000_000,
    }


def test_a_providers_bill_wins_over_the_models_price() -> None:
    model = Billed("p").model("m", price=PRICE, max_output_tokens=100)
    resolved = resolve_priced_charge(None, model, model.provider, _ctx(model, Usage(input_tokens=10)), None)
    assert (resolved.draft, resolved.classes) == (ChargeDraft(amount_microcredits=11), {})


def test_an_actions_charge_wins_over_the_price() -> None:
    model = Text("p").model("m", price=PRICE, max_output_tokens=100)
    action = ChargeDraft(amount_microcredits=1)
    assert resolve_priced_charge(action, model, model.provider, _ctx(model, Usage()), None).draft == action


def test_a_model_bill_may_defer_to_the_price() -> None:
    model = Text("p").model("m", price=PRICE, max_output_tokens=100, bill=lambda ctx, output: None)
    resolved = resolve_priced_charge(None, model, model.provider, _ctx(model, Usage()), None)
    assert resolved.draft is not None and resolved.draft.amount_microcredits == 3
