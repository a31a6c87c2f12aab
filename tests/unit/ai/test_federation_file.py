"""Federation YAML files: the shipped example loads, and bad files are refused naming file, line and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from downcity.ai.federation_file import FederationFileError, load_federation_file
from downcity.ai.federation_spec import MediaMatch
from downcity.ai.pricing import Price
from downcity.ai.provider import MediaInfo
from downcity.runtime import load_federation

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "federation.yaml"

VALID = """\
name: yaml-test
hooks:
  before: [tests.unit.ai.yaml_hooks:deny_banned]
providers:
  - id: up
    base_url: http://127.0.0.1:9/v1
    env_key: UP_API_KEY
    passthrough_model: upstream-chat
models:
  - id: chat
    provider: up
    default: [text, stream, openai]
    fallback:
      - {media: image/*, model: eyes}
    price: {per_call: 700}
    hold_microcredits: 700
    hooks:
      after: [tests.unit.ai.yaml_hooks:deny_banned]
  - id: eyes
    provider: up
    media: [image/*]
    bill: tests.unit.ai.yaml_hooks:half_price
    hold_microcredits: 1000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "federation.yaml"
    path.write_text(text)
    return path


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(FederationFileError) as refused:
        load_federation_file(path)
    return str(refused.value).replace(str(path), "federation.yaml")


def test_the_shipped_example_declares_an_openai_upstream_with_a_vision_fallback() -> None:
    federation = load_federation(str(EXAMPLE))
    (provider,) = federation.providers.values()
    chat, vision = federation.models["gpt-4o-mini"], federation.models["gpt-4o"]
    assert (federation.name, provider.id, provider.base_url, provider.env_key) == (
        "openai-example",
        "openai",
        "https://api.openai.com/v1",
        "OPENAI_API_KEY",
    )
    assert (chat.default, chat.hold_microcredits, chat.price) == (
        ("text", "stream", "openai"),
        20_000,
        Price(input=1_000_000, output=4_000_000),
    )
    assert [(rule.match, rule.model) for rule in chat.fallback] == [(MediaMatch("image/*"), "gpt-4o")]
    assert (vision.media, vision.default, vision.price) == (("image/*",), (), Price(input=3_000_000, output=10_000_000))


def test_a_file_names_hooks_and_a_bill_function_by_import_path(tmp_path: Path) -> None:
    from tests.unit.ai import yaml_hooks

    federation = load_federation_file(write(tmp_path, VALID))
    chat, eyes = federation.models["chat"], federation.models["eyes"]
    assert federation.hooks.before == [yaml_hooks.deny_banned]
    assert (chat.hooks.after, chat.price, chat.provider.passthrough_model) == (
        [yaml_hooks.deny_banned],
        Price(per_request=700),
        "upstream-chat",
    )
    assert eyes.bill is yaml_hooks.half_price


def test_a_media_match_covers_its_pattern_only() -> None:
    match = MediaMatch("image/*")
    assert [match(MediaInfo(t)) for t in ("image/png", "image/jpeg", "application/pdf")] == [True, True, False]


def test_a_misspelt_field_is_refused_on_its_line(tmp_path: Path) -> None:
    text = VALID.replace("    price: {per_call: 700}", "    prize: {per_call: 700}")
    assert refusal(tmp_path, text) == "federation.yaml:15: models[0].prize: Extra inputs are not permitted"


def test_a_model_of_an_undeclared_provider_is_refused_naming_the_declared_ones(tmp_path: Path) -> None:
    text = VALID.replace("  - id: eyes\n    provider: up", "  - id: eyes\n    provider: upp")
    assert refusal(tmp_path, text) == "federation.yaml:20: models[1].provider: no provider 'upp'; declared: ['up']"


def test_a_model_billed_by_a_function_without_a_hold_is_refused_at_the_model(tmp_path: Path) -> None:
    text = VALID.replace("    hold_microcredits: 1000\n", "")
    assert refusal(tmp_path, text) == (
        "federation.yaml:19: models[1].hold_microcredits: a billed model needs a hold (or a price) that bounds one "
        "call's cost"
    )


def test_a_priced_model_needs_no_hold_and_declares_its_rates_per_million_tokens(tmp_path: Path) -> None:
    text = VALID.replace(
        "    price: {per_call: 700}\n    hold_microcredits: 700\n",
        (
            "    price: {input: 150000, cached_input: 75000, output: 600000, reasoning: 900000}\n"
            "    max_output_tokens: 4096\n"
        ),
    )
    chat = load_federation_file(write(tmp_path, text)).models["chat"]
    assert (chat.price, chat.max_output_tokens, chat.hold_microcredits, chat.billable) == (
        Price(input=150_000, cached_input=75_000, output=600_000, reasoning=900_000),
        4096,
        None,
        True,
    )


def test_a_rate_given_in_both_spellings_is_refused(tmp_path: Path) -> None:
    text = VALID.replace("{per_call: 700}", "{per_call: 700, per_request: 700}")
    assert (
        refusal(tmp_path, text)
        == "federation.yaml:15: models[0].price.per_call: give per_request or per_call, not both"
    )


def test_a_price_that_is_not_an_integer_is_refused(tmp_path: Path) -> None:
    text = VALID.replace("{per_call: 700}", "{per_call: 0.5}")
    assert refusal(tmp_path, text) == "federation.yaml:15: models[0].price.per_call: Input should be a valid integer"


def test_a_hook_that_does_not_import_is_refused_naming_its_index(tmp_path: Path) -> None:
    text = VALID.replace("after: [tests.unit.ai.yaml_hooks:deny_banned]", "after: [tests.unit.ai.yaml_hooks:nope]")
    assert refusal(tmp_path, text) == (
        "federation.yaml:18: models[0].hooks.after[0]: module 'tests.unit.ai.yaml_hooks' has no attribute 'nope'"
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = VALID.replace("    default: [text, stream, openai]", "    default: [text, image]").replace(
        "base_url: http://127.0.0.1:9/v1", "base_url: 127.0.0.1:9/v1"
    )
    assert refusal(tmp_path, text).splitlines() == [
        "federation.yaml:6: providers[0].base_url: should be an http:// or https:// URL",
        "federation.yaml:12: models[0].default[1]: Input should be 'text', 'stream' or 'openai'",
    ]


def test_a_hook_that_is_not_an_import_path_is_refused_saying_what_one_looks_like(tmp_path: Path) -> None:
    text = VALID.replace("before: [tests.unit.ai.yaml_hooks:deny_banned]", "before: [deny_banned]")
    assert refusal(tmp_path, text) == (
        "federation.yaml:3: hooks.before[0]: should be an import path 'package.module:function'"
    )


def test_invalid_yaml_is_refused_on_the_line_of_the_problem(tmp_path: Path) -> None:
    text = VALID.replace("    default: [text, stream, openai]", "    default: [text, stream, openai")
    assert refusal(tmp_path, text) == "federation.yaml:13: invalid YAML: expected ',' or ']', but got ':'"


def test_the_readme_shows_the_shipped_example() -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert yaml.safe_load(block) == yaml.safe_load(EXAMPLE.read_text())


def test_a_file_declares_quotas(tmp_path: Path) -> None:
    text = VALID + "quotas:\n  - {id: starter, metadata: {plan: starter}, requests_per_minute: 5, per_user: true}\n"
    (quota,) = load_federation_file(write(tmp_path, text)).quotas
    assert (quota.id, quota.metadata, quota.limits(), quota.per_user) == (
        "starter",
        {"plan": "starter"},
        {"requests": 5},
        True,
    )


def test_a_quota_without_a_limit_is_refused_in_the_file(tmp_path: Path) -> None:
    assert "quotas[0]" in refusal(tmp_path, VALID + "quotas:\n  - {id: starter}\n")
