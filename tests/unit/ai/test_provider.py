"""The provider contract: capabilities, model configs, catalog registration, context and metering."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from downcity.ai.context import CityInfo, Context, Metering, UserInfo
from downcity.ai.federation import Federation
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import FallbackRule, MediaInfo, ModelConfig, Provider
from downcity.ai.service import AIService
from downcity.errors import DowncityHTTPError
from downcity.types import ChargeDraft, FilePart, ImageJobResult, TextPart, UIMessage, Usage


class Compat(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


class HalfImage(Provider):
    async def image_create(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult(job_id="j", status="queued")


class FullImage(HalfImage):
    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult(job_id="j", status="running")


class OwnOpenAI(Provider):
    async def openai(self, ctx: Context) -> dict[str, Any] | AsyncIterator[bytes]:
        return {}


class Video(Provider):
    async def video(self, ctx: Context) -> dict[str, Any]:
        return {}


class Billed(Provider):
    def bill(self, ctx: Context, output: Any) -> ChargeDraft:
        return ChargeDraft(amount_microcredits=1)


@pytest.mark.parametrize(
    ("provider", "capabilities"),
    [
        (Compat("compat"), {"text", "stream"}),
        (Provider("relay", base_url="https://up.test/v1", env_key="KEY"), {"openai"}),
        (Provider("no-key", base_url="https://up.test/v1"), set()),
        (Compat("compat-relay", base_url="https://up.test/v1", env_key="KEY"), {"text", "stream", "openai"}),
        (HalfImage("half"), set()),
        (FullImage("full"), {"image"}),
        (OwnOpenAI("own"), {"openai"}),
        (Video("video"), {"video"}),
    ],
)
def test_capabilities_follow_what_the_subclass_defines(provider: Provider, capabilities: set[str]) -> None:
    assert provider.capabilities == frozenset(capabilities)


def test_auto_passthrough_needs_no_openai_method() -> None:
    own = OwnOpenAI("own", base_url="https://up.test/v1", env_key="KEY")
    assert (own.auto_passthrough, Provider("p", base_url="https://x", env_key="K").auto_passthrough) == (
        False,
        True,
    )


def test_has_bill_only_when_defined() -> None:
    assert (Billed("billed").has_bill, Compat("plain").has_bill) == (True, False)


@pytest.mark.parametrize("bad_id", ["", "has space", "x" * 65, "-leading"])
def test_invalid_provider_id_is_rejected(bad_id: str) -> None:
    with pytest.raises(ValueError, match="provider id"):
        Provider(bad_id)


def test_model_defaults_name_and_upstream_model_to_its_id() -> None:
    model = Compat("compat").model("gpt-x")
    assert (model.name, model.upstream_model, model.pathways) == ("gpt-x", "gpt-x", ("text", "stream"))


def test_model_accepts_a_single_default_pathway_string() -> None:
    assert Compat("compat").model("m", default="text").default == ("text",)


def test_default_for_a_pathway_the_model_lacks_is_rejected() -> None:
    with pytest.raises(ValueError, match="cannot be the default for \\['image'\\]"):
        Compat("compat").model("m", default=["text", "image"])


def test_negative_hold_is_rejected() -> None:
    with pytest.raises(ValueError, match="hold_microcredits"):
        Compat("compat").model("m", hold_microcredits=-1)


def test_fallback_dict_form_becomes_a_rule() -> None:
    def is_image(media: MediaInfo) -> bool:
        return media.media_type.startswith("image/")

    model = Compat("compat").model("m", fallback=[{"match": is_image, "model": "vision"}])
    assert model.fallback == (FallbackRule(match=is_image, model="vision"),)


def test_fallback_dict_without_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="exactly 'match' and 'model'"):
        Compat("compat").model("m", fallback=[{"match": lambda media: True}])


def test_to_public_hides_upstream_details() -> None:
    provider = Compat("compat", base_url="https://secret.test", env_key="KEY")
    model = provider.model("m", name="M", description="d", default=["text"], upstream_model="up-1", media=["image/*"])
    assert model.to_public() == {
        "id": "m",
        "name": "M",
        "description": "d",
        "provider": "compat",
        "pathways": ["text", "stream", "openai"],
        "default_for": ["text"],
        "media": ["image/*"],
        "price": None,
        "max_output_tokens": None,
    }


@pytest.mark.parametrize(
    ("media", "media_type", "accepted"),
    [
        (("image/*",), "image/png", True),
        (("image/png",), "image/*", True),
        (("image/png",), "image/jpeg", False),
        (("*/*",), "application/pdf", True),
        ((), "image/png", False),
    ],
)
def test_model_accepts_media_by_pattern(media: tuple[str, ...], media_type: str, accepted: bool) -> None:
    assert Compat("compat").model("m", media=media).accepts(media_type) is accepted


def test_model_hooks_register_by_decorator() -> None:
    model = Compat("compat").model("m")

    @model.before
    def deny(ctx: Context) -> None:
        raise DowncityHTTPError(429, "rate_limited", "slow down")

    assert model.hooks.before == [deny]


@pytest.mark.parametrize(
    ("input", "expected"),
    [
        ({"prompt": "draw a cat"}, "draw a cat"),
        (
            {"messages": [{"role": "user", "parts": [{"type": "text", "text": "a"}, {"type": "file", "url": "u"}]}]},
            "a",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "b"}, {"type": "image_url"}]}]},
            "b",
        ),
        ({"messages": [{"role": "system", "content": "be brief"}], "prompt": "c"}, "be brief\nc"),
        (
            [UIMessage(role="user", parts=[TextPart(text="d"), FilePart(media_type="image/png", url="u")])],
            "d",
        ),
    ],
)
def test_extract_prompt_flattens_input_to_text(input: Any, expected: str) -> None:
    assert Compat("compat").extract_prompt(input) == expected


def _context(env: dict[str, str] | None = None) -> Context:
    return Context(
        input={},
        user=UserInfo(user_id="u1"),
        city=CityInfo(city_id="c1"),
        model=Compat("compat").model("m"),
        pathway="text",
        request_id="req_1",
        env_reader=env,
    )


def test_context_env_returns_the_value() -> None:
    assert _context({"KEY": "sk-1"}).env("KEY") == "sk-1"


def test_context_env_missing_is_503_naming_the_key() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        _context({}).env("KEY")
    assert (caught.value.status, caught.value.type) == (503, "provider_not_configured")
    assert caught.value.message == "provider 'compat' is not configured: KEY is not set"


def test_context_exposes_model_provider_and_variant_alias() -> None:
    ctx = _context()
    assert (ctx.variant, ctx.provider) == (ctx.model, ctx.model.provider)


def test_context_refuses_a_provider_other_than_the_models() -> None:
    with pytest.raises(ValueError, match="served by 'compat', not 'other'"):
        Context(
            input={},
            user=UserInfo(user_id="u1"),
            city=CityInfo(city_id="c1"),
            model=Compat("compat").model("m"),
            provider=Compat("other"),
            pathway="text",
            request_id="req_1",
        )


def test_context_without_http_client_says_so() -> None:
    with pytest.raises(RuntimeError, match="no HTTP client"):
        _ = _context().http


def test_metering_adds_usage() -> None:
    metering = Metering()
    metering.add_usage(Usage(input_tokens=1, output_tokens=2, cached_tokens=3, reasoning_tokens=4))
    metering.add_usage(Usage(input_tokens=10, output_tokens=20))
    assert metering.usage == Usage(input_tokens=11, output_tokens=22, cached_tokens=3, reasoning_tokens=4)


def test_metering_keeps_the_first_ttfb() -> None:
    metering = Metering(started_at=time.perf_counter() - 1.0)
    metering.mark_first_byte()
    first = metering.ttfb_ms
    metering.started_at -= 5.0
    metering.mark_first_byte()
    assert metering.ttfb_ms == first
    assert first is not None and 1000 <= first < 2000


def test_metering_takes_a_dict_charge() -> None:
    metering = Metering()
    metering.set_charge({"amount_microcredits": 5, "note": "n"})
    assert metering.charge == ChargeDraft(amount_microcredits=5, note="n")


def _catalog() -> tuple[ModelConfig, ModelConfig]:
    provider = Compat("compat")
    return provider.model("a", default=["text"]), provider.model("b", default=["stream"])


def test_federation_lists_models_providers_and_defaults() -> None:
    a, b = _catalog()
    federation = Federation().use(AIService().use(a).use(b))
    assert (list(federation.models), list(federation.providers)) == (["a", "b"], ["compat"])
    assert (federation.default_model("text"), federation.default_model("stream")) == (a, b)
    assert federation.default_model("image") is None


def test_service_rejects_a_duplicate_model_id() -> None:
    a, _ = _catalog()
    with pytest.raises(ValueError, match="already registered"):
        AIService().use(a).use(Compat("other").model("a"))


def test_two_defaults_for_one_pathway_are_rejected() -> None:
    a, _ = _catalog()
    with pytest.raises(ValueError, match="both the default for 'text'"):
        AIService().use(a).use(Compat("other").model("c", default=["text"]))


def test_federation_rejects_a_model_in_two_services() -> None:
    a, _ = _catalog()
    federation = Federation().use(AIService("one").use(a))
    with pytest.raises(ValueError, match="registered in both 'one' and 'two'"):
        federation.use(AIService("two").use(Compat("other").model("a")))


def test_federation_rejects_two_providers_with_one_id() -> None:
    federation = Federation().use(AIService("one").use(Compat("same").model("x")))
    with pytest.raises(ValueError, match="share the id 'same'"):
        federation.use(AIService("two").use(Compat("same").model("y")))


def test_federation_rejects_a_duplicate_service_id() -> None:
    federation = Federation().use(AIService("ai"))
    with pytest.raises(ValueError, match="already mounted"):
        federation.use(AIService("ai"))


def test_federation_model_unknown_id_is_422() -> None:
    with pytest.raises(DowncityHTTPError) as caught:
        Federation().model("ghost")
    assert (caught.value.status, caught.value.type, caught.value.field) == (422, "unknown_model", "model")


def test_a_hold_function_sizes_the_hold_from_the_request() -> None:
    model = FullImage("img").model("pic", bill=lambda ctx, output: None, hold_microcredits=lambda body: 7 * body["n"])

    assert (model.billable, model.hold_for({"n": 3})) == (True, 21)


def test_a_hold_function_that_returns_no_integer_is_a_502() -> None:
    model = FullImage("img").model("pic", hold_microcredits=lambda body: 1.5)

    with pytest.raises(DowncityHTTPError) as caught:
        model.hold_for({})
    assert (caught.value.status, caught.value.type) == (502, "provider_error")


def test_a_model_without_a_hold_is_not_billable() -> None:
    model = FullImage("img").model("pic")

    assert (model.billable, model.hold_for({})) == (False, 0)
