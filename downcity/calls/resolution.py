"""Which model runs a request: explicit id or pathway default, then media fallback; error fallback on failure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from downcity.ai.federation import Federation
from downcity.ai.provider import MediaInfo, ModelConfig
from downcity.ai.resilience import Failure
from downcity.errors import DowncityHTTPError

_OPENAI_IMAGE_PARTS = frozenset({"image_url", "input_image"})


def resolve_model(federation: Federation, pathway: str, model_id: str | None) -> ModelConfig:
    """The named model, else the pathway's default; 422 on `model` when neither serves the pathway."""
    if model_id is None:
        model = federation.default_model(pathway)
        if model is None:
            raise DowncityHTTPError(
                422, "no_default_model", f"no default model for '{pathway}': name one in 'model'", "model"
            )
        return model
    if not isinstance(model_id, str):
        raise DowncityHTTPError(422, "invalid_request", "model must be a string", "model")
    model = federation.models.get(model_id)
    if model is None:
        raise DowncityHTTPError(422, "unknown_model", f"unknown model '{model_id}'", "model")
    if pathway not in model.pathways:
        raise DowncityHTTPError(422, "unsupported_pathway", f"model '{model_id}' does not serve '{pathway}'", "model")
    return model


def extract_media(input: Mapping[str, Any]) -> list[MediaInfo]:
    """The files in a request: UIMessage file parts and OpenAI image parts (as ``image/*``)."""
    messages = input.get("messages")
    if not isinstance(messages, list):
        return []
    media: list[MediaInfo] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        parts = message.get("parts", message.get("content"))
        if isinstance(parts, list):
            media.extend(info for part in parts if (info := _media_of(part)) is not None)
    return media


def _media_of(part: Any) -> MediaInfo | None:
    if not isinstance(part, Mapping):
        return None
    kind = part.get("type")
    if kind == "file":
        media_type = part.get("mediaType", part.get("media_type"))
        if isinstance(media_type, str) and media_type:
            url = part.get("url")
            return MediaInfo(media_type=media_type, url=url if isinstance(url, str) else None)
        return None
    if kind in _OPENAI_IMAGE_PARTS:
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else image
        return MediaInfo(media_type="image/*", url=url if isinstance(url, str) else None)
    return None


def apply_fallback(
    federation: Federation, model: ModelConfig, media: list[MediaInfo], pathway: str | None = None
) -> tuple[ModelConfig, str | None]:
    """The model that runs the request and, when it differs, the id of the model it falls back from.

    Only files the model cannot take trigger fallback. Rules are tried in order; the first whose `match`
    is true for one of those files, and whose target is registered (and serves `pathway`, when given),
    wins. No such rule leaves the original model.
    """
    unsupported = [info for info in media if not model.accepts(info.media_type)]
    if not unsupported:
        return model, None
    models = federation.models
    for rule in model.fallback:
        if rule.on != "media":
            continue
        target = models.get(rule.model_id)
        if target is None or (pathway is not None and pathway not in target.pathways):
            continue
        if isinstance(rule.model, ModelConfig) and rule.model is not target:
            continue
        if any(rule.match(info) for info in unsupported):  # type: ignore[arg-type]
            return target, model.id
    return model, None


def error_fallback(
    federation: Federation, model: ModelConfig, failure: Failure, pathway: str, tried: set[str], held: bool
) -> ModelConfig | None:
    """The model to run after `model` failed, or None: its first ``on="error"`` rule that matches `failure`.

    A target must be registered, serve `pathway` and not be tried already in this call; when the call holds
    no credit (`held` false) a billable target is skipped, since nothing would bound its charge.
    """
    for rule in model.fallback:
        if rule.on != "error":
            continue
        target = federation.models.get(rule.model_id)
        if target is None or target.id in tried or pathway not in target.pathways:
            continue
        if isinstance(rule.model, ModelConfig) and rule.model is not target:
            continue
        if target.billable and not held:
            continue
        if rule.match(failure):  # type: ignore[arg-type]
            return target
    return None
