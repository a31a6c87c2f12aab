"""`Price`: each token class at its own rate, one rounding per call, fallback rates and the public shape."""

from __future__ import annotations

import pytest

from downcity.ai.messages import normalize_ai_usage
from downcity.ai.pricing import PRICE_CLASSES, Price, round_up, usage_units
from downcity.store.schema import PRICE_CLASS_COLUMNS
from downcity.types import Usage

RATES = Price(
    input=2_000_000,
    cached_input=500_000,
    cache_write=2_500_000,
    output=8_000_000,
    reasoning=10_000_000,
    per_request=7,
    per_image=40_000,
    per_second=300,
)


@pytest.mark.parametrize(
    ("usage", "cls", "picocredits"),
    [
        (Usage(input_tokens=10), "input", 10 * 2_000_000),
        (Usage(input_tokens=10, cached_tokens=4), "cached_input", 4 * 500_000),
        (Usage(input_tokens=10, cache_write_tokens=3), "cache_write", 3 * 2_500_000),
        (Usage(output_tokens=9, reasoning_tokens=5), "output", 4 * 8_000_000),
        (Usage(output_tokens=9, reasoning_tokens=5), "reasoning", 5 * 10_000_000),
        (Usage(), "request", 7 * 1_000_000),
        (Usage(images=2), "image", 2 * 40_000 * 1_000_000),
        (Usage(seconds=6), "second", 6 * 300 * 1_000_000),
    ],
)
def test_each_class_is_billed_at_its_own_rate(usage: Usage, cls: str, picocredits: int) -> None:
    assert RATES.classes(usage)[cls] == picocredits


def test_cached_and_written_tokens_leave_the_plain_input_class() -> None:
    units = usage_units(Usage(input_tokens=100, cached_tokens=60, cache_write_tokens=30, output_tokens=5))
    assert (units["input"], units["cached_input"], units["cache_write"], units["output"]) == (10, 60, 30, 5)


def test_overlapping_counts_never_exceed_the_tokens_they_are_part_of() -> None:
    units = usage_units(
        Usage(input_tokens=10, cached_tokens=8, cache_write_tokens=8, output_tokens=3, reasoning_tokens=9)
    )
    assert (units["input"], units["cached_input"], units["cache_write"], units["output"], units["reasoning"]) == (
        0,
        8,
        2,
        0,
        3,
    )


def test_the_charge_rounds_up_once_per_call_not_per_class() -> None:
    price = Price(input=1, output=1)
    # 1 input and 1 output token cost 1 picocredit each: one rounding gives 1 microcredit, two would give 2.
    assert price.charge(Usage(input_tokens=1, output_tokens=1)) == 1


def test_an_exact_charge_is_not_rounded() -> None:
    price = Price(input=1_000_000, output=3_000_000)
    assert price.charge(Usage(input_tokens=12, output_tokens=5)) == 12 + 15


def test_round_up_keeps_whole_microcredits_and_lifts_any_fraction() -> None:
    assert [round_up(0), round_up(1), round_up(1_000_000), round_up(1_000_001)] == [0, 1, 1, 2]


def test_unset_cache_and_reasoning_rates_bill_at_the_full_rate_never_free() -> None:
    price = Price(input=3_000_000, output=9_000_000)
    usage = Usage(input_tokens=10, cached_tokens=4, cache_write_tokens=2, output_tokens=6, reasoning_tokens=6)
    assert price.charge(usage) == 10 * 3 + 6 * 9


def test_a_cached_rate_of_zero_is_honoured() -> None:
    price = Price(input=1_000_000, cached_input=0)
    assert price.charge(Usage(input_tokens=10, cached_tokens=10)) == 0


def test_images_come_from_the_output_when_the_usage_reports_none() -> None:
    assert Price(per_image=20_000).charge(Usage(), images=3) == 60_000


@pytest.mark.parametrize("value", [-1, 1.5, True, "5"])
def test_a_rate_must_be_a_non_negative_integer(value: object) -> None:
    with pytest.raises(ValueError, match=r"Price\.output must be a non-negative integer"):
        Price(output=value)  # type: ignore[arg-type]


def test_a_price_of_zeros_is_free() -> None:
    assert (Price().free, Price(per_request=1).free) == (True, False)


def test_the_public_price_resolves_fallback_rates() -> None:
    assert Price(input=5, output=7, per_request=2).to_public() == {
        "input": 5,
        "cached_input": 5,
        "cache_write": 5,
        "output": 7,
        "reasoning": 7,
        "per_request": 2,
        "per_image": 0,
        "per_second": 0,
    }


def test_openai_usage_details_fill_the_cached_and_reasoning_classes() -> None:
    raw = {
        "prompt_tokens": 40,
        "completion_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 30},
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    assert normalize_ai_usage(raw) == Usage(input_tokens=40, output_tokens=25, cached_tokens=30, reasoning_tokens=20)


def test_anthropic_cache_fields_are_added_back_to_the_prompt() -> None:
    raw = {"input_tokens": 5, "output_tokens": 9, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
    assert normalize_ai_usage(raw) == Usage(input_tokens=125, output_tokens=9, cached_tokens=100, cache_write_tokens=20)


def test_the_store_has_a_cost_column_per_price_class() -> None:
    assert PRICE_CLASS_COLUMNS == PRICE_CLASSES
