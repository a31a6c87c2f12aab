"""The package's public API is explicit and importable without Ray."""

from __future__ import annotations

import subprocess
import sys

import downcity

EXPECTED = {
    "AIService", "ActionResult", "Breaker", "ChargeDraft", "CityInfo", "Context", "DowncityHTTPError", "Failure",
    "FallbackRule", "Federation", "FederationFileError", "FilePart", "Hooks", "ImageJobResult", "MediaInfo",
    "Metering", "ModelConfig", "OpenAICompatibleClient", "OpenAICompatibleProvider", "Price", "Provider",
    "ReasoningPart", "Retry", "Settings", "TextPart", "Timeouts", "ToolCallPart", "UIMessage", "Usage", "UserInfo",
    "build_assistant_message", "build_image_message", "build_tool_set", "load_federation_file", "normalize_ai_usage",
    "normalize_openai_compatible_body", "read_openai_compatible_sse_usage", "read_required_env",
    "resolve_upstream_model", "trim_trailing_slash",
}  # fmt: skip


def test_all_lists_exactly_the_public_names() -> None:
    assert set(downcity.__all__) == EXPECTED


def test_every_public_name_resolves() -> None:
    assert all(getattr(downcity, name, None) is not None for name in downcity.__all__)


def test_the_library_does_not_import_ray() -> None:
    code = "import sys, downcity, downcity.http.app, downcity.local; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
