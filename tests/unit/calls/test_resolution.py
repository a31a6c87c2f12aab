"""Model resolution (explicit id or pathway default) and media fallback."""

from __future__ import annotations

from typing import Any

import pytest

from downcity.ai.context import Context
from downcity.ai.federation import Federation
from downcity.ai.openai_client import OpenAICompatibleClient
from downcity.ai.provider import FallbackRule, MediaInfo, ModelConfig, Provider
from downcity.ai.service import AIService
from downcity.calls.resolution import apply_fallback, extract_media, resolve_model
from downcity.errors import DowncityHTTPError
from downcity.types import ImageJobResult


class Compat(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


class Images(Provider):
    async def image_create(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult(job_id="j", status="queued")

    async def image_fetch(self, ctx: Context) -> ImageJobResult:
        return ImageJobResult(job_id="j", status="queued")


def is_image(media: MediaInfo) -> bool:
    return media.media_type.startswith("image/")


def is_pdf(media: MediaInfo) -> bool:
    return media.media_type == "application/pdf"


compat = Compat("compat", base_url="https://up.test/v1", env_key="UP_KEY")
vision = compat.model("vision", media=["image/*"])
reader = compat.model("reader", media=["application/pdf"])
painter = Images("images").model("painter", default=["image"])


def _federation(*models: ModelConfig) -> Federation:
    service = AIService()
    for model in models:
        service.use(model)
    return Federation().use(service)


def _error(fn: Any, *args: Any) -> DowncityHTTPError:
    with pytest.raises(DowncityHTTPError) as caught:
        fn(*args)
    return caught.value


def test_resolve_model_returns_the_named_model() -> None:
    assert resolve_model(_federation(vision, painter), "text", "vision") is vision


def test_resolve_model_without_id_returns_the_pathway_default() -> None:
    assert resolve_model(_federation(vision, painter), "image", None) is painter


def test_resolve_model_unknown_id_is_422_on_model() -> None:
    error = _error(resolve_model, _federation(vision), "text", "ghost")
    assert (error.status, error.type, error.field) == (422, "unknown_model", "model")


def test_resolve_model_lacking_the_pathway_is_422_on_model() -> None:
    error = _error(resolve_model, _federation(vision, painter), "text", "painter")
    assert (error.status, error.type, error.field) == (422, "unsupported_pathway", "model")


def test_resolve_model_without_default_is_422_on_model() -> None:
    error = _error(resolve_model, _federation(vision), "text", None)
    assert (error.status, error.type, error.field) == (422, "no_default_model", "model")


def test_extract_media_reads_uimessage_file_parts() -> None:
    parts = [
        {"type": "text", "text": "hi"},
        {"type": "file", "mediaType": "application/pdf", "url": "https://f/a.pdf"},
    ]
    media = extract_media({"messages": [{"role": "user", "parts": parts}]})
    assert media == [MediaInfo(media_type="application/pdf", url="https://f/a.pdf")]


def test_extract_media_normalises_openai_image_parts() -> None:
    content = [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "https://i/1.png"}},
        {"type": "input_image", "image_url": "https://i/2.png"},
    ]
    media = extract_media({"messages": [{"role": "user", "content": content}]})
    assert media == [MediaInfo("image/*", "https://i/1.png"), MediaInfo("image/*", "https://i/2.png")]


def test_extract_media_of_a_prompt_is_empty() -> None:
    assert extract_media({"prompt": "hi"}) == []


def _with_media(media_type: str) -> list[MediaInfo]:
    return [MediaInfo(media_type=media_type, url="https://f/x")]


def test_no_media_keeps_the_model() -> None:
    text = compat.model("t1", fallback=[{"match": is_image, "model": vision}])
    assert apply_fallback(_federation(text, vision), text, [], "text") == (text, None)


def test_media_the_model_accepts_keeps_the_model() -> None:
    smart = compat.model("t2", media=["image/*"], fallback=[{"match": is_image, "model": vision}])
    assert apply_fallback(_federation(smart, vision), smart, _with_media("image/png"), "text") == (
        smart,
        None,
    )


def test_the_first_matching_rule_wins() -> None:
    text = compat.model("t3", fallback=[FallbackRule(is_image, vision), FallbackRule(is_image, reader)])
    result = apply_fallback(_federation(text, vision, reader), text, _with_media("image/png"), "text")
    assert result == (vision, "t3")


def test_a_non_matching_rule_is_skipped() -> None:
    text = compat.model("t4", fallback=[FallbackRule(is_image, vision), FallbackRule(is_pdf, reader)])
    result = apply_fallback(_federation(text, vision, reader), text, _with_media("application/pdf"), "text")
    assert result == (reader, "t4")


def test_an_unregistered_target_is_skipped() -> None:
    text = compat.model("t5", fallback=[FallbackRule(is_image, "missing"), FallbackRule(is_image, vision)])
    result = apply_fallback(_federation(text, vision), text, _with_media("image/png"), "text")
    assert result == (vision, "t5")


def test_a_target_without_the_pathway_is_skipped() -> None:
    text = compat.model("t6", fallback=[FallbackRule(is_image, painter), FallbackRule(is_image, vision)])
    result = apply_fallback(_federation(text, painter, vision), text, _with_media("image/png"), "stream")
    assert result == (vision, "t6")


def test_no_matching_rule_keeps_the_model() -> None:
    text = compat.model("t7", fallback=[FallbackRule(is_pdf, reader)])
    assert apply_fallback(_federation(text, reader), text, _with_media("image/png"), "text") == (text, None)


def test_a_string_reference_is_resolved_by_id() -> None:
    text = compat.model("t8", fallback=[{"match": is_image, "model": "vision"}])
    assert apply_fallback(_federation(text, vision), text, _with_media("image/jpeg"), "text") == (
        vision,
        "t8",
    )


def test_openai_image_url_parts_trigger_fallback() -> None:
    text = compat.model("t9", fallback=[{"match": is_image, "model": "vision"}])
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}
    assert apply_fallback(_federation(text, vision), text, extract_media(body), "openai") == (vision, "t9")


def test_openai_input_image_parts_trigger_fallback() -> None:
    text = compat.model("t10", fallback=[{"match": is_image, "model": "vision"}])
    body = {"messages": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]}
    assert apply_fallback(_federation(text, vision), text, extract_media(body), "text") == (vision, "t10")


def test_rules_only_see_the_media_the_model_cannot_take() -> None:
    pdf_ok = compat.model("t11", media=["application/pdf"], fallback=[FallbackRule(is_pdf, reader)])
    media = _with_media("application/pdf") + _with_media("image/png")
    assert apply_fallback(_federation(pdf_ok, reader), pdf_ok, media, "text") == (pdf_ok, None)
