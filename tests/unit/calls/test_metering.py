"""Offline token counts: the shipped OpenAI encodings, model-id routing, chat prompt counting, no network."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from tiktoken_ext import openai_public

from downcity.calls import metering
from downcity.calls.metering import ESTIMATE_NOTE, count_prompt_tokens, count_tokens
from downcity.types import UIMessage

ROOT = Path(__file__).resolve().parents[3]
ENCODINGS = ROOT / "downcity" / "calls" / "encodings"

# A text whose count tells the two encodings apart: 2 tokens in o200k_base, 4 in cl100k_base.
JAPANESE = "こんにちは世界"

# The openai-cookbook "How to count tokens with tiktoken" example, whose counts the API confirmed:
# 129 prompt tokens on gpt-3.5-turbo and gpt-4 (cl100k_base), 124 on gpt-4o and gpt-4o-mini (o200k_base).
COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


# --- the shipped encodings ----------------------------------------------------------------------------


def test_the_shipped_tables_give_the_published_token_ids() -> None:
    o200k = metering._encoding("o200k_base")
    cl100k = metering._encoding("cl100k_base")
    assert o200k.encode_ordinary("hello world") == [24912, 2375]
    assert cl100k.encode_ordinary("hello world") == [15339, 1917]
    assert cl100k.encode_ordinary("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert (o200k.n_vocab, cl100k.n_vocab) == (200019, 100277)


def test_each_encoding_is_built_once_per_process() -> None:
    assert metering._encoding("o200k_base") is metering._encoding("o200k_base")
    assert metering._encoding("cl100k_base") is metering._encoding("cl100k_base")


def test_patterns_special_tokens_and_digests_are_tiktokens_own(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: dict[str, str | None] = {}

    def no_download(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        requested[url.rpartition("/")[2]] = expected_hash
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", no_download)
    for name in ("o200k_base", "cl100k_base"):
        constructor = openai_public.ENCODING_CONSTRUCTORS[name]()
        spec = metering._SPECS[name]
        assert (spec.pat_str, spec.special_tokens) == (constructor["pat_str"], constructor["special_tokens"])
        assert requested[f"{name}.tiktoken"] == spec.sha256


def test_a_corrupt_shipped_file_is_refused() -> None:
    spec = metering._SPECS["cl100k_base"]
    forged = metering._Spec(spec.file, "0" * 64, spec.pat_str, spec.special_tokens)
    with pytest.raises(RuntimeError, match=r"cl100k_base\.tiktoken\.gz is corrupt"):
        metering._read_ranks(forged)


def test_the_encodings_ship_as_package_data_under_5_mb() -> None:
    files = sorted(path.name for path in ENCODINGS.iterdir() if path.suffix == ".gz")
    assert files == ["cl100k_base.tiktoken.gz", "o200k_base.tiktoken.gz"]
    assert sum((ENCODINGS / name).stat().st_size for name in files) < 5_000_000
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "calls/encodings/*.tiktoken.gz" in pyproject["tool"]["setuptools"]["package-data"]["downcity"]


def test_counting_needs_no_network_and_no_cache(tmp_path: Path) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("no network in this test")

        socket.socket.connect = refuse
        socket.create_connection = refuse

        from downcity.calls.metering import count_prompt_tokens, count_tokens

        print(
            count_tokens("hello world"),
            count_tokens("hello world", "gpt-4"),
            count_tokens("tiktoken is great!", "gpt-3.5-turbo"),
            count_tokens("こんにちは世界", "gpt-4o"),
            count_prompt_tokens({"prompt": "hello world"}, "gpt-4.1"),
        )
        """
    )
    dead_proxy = "http://127.0.0.1:9"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TIKTOKEN_CACHE_DIR": str(cache),
        "DATA_GYM_CACHE_DIR": str(cache),
        "HTTP_PROXY": dead_proxy,
        "HTTPS_PROXY": dead_proxy,
        "http_proxy": dead_proxy,
        "https_proxy": dead_proxy,
        "NO_PROXY": "",
        "no_proxy": "",
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "2 2 6 2 9\n"
    assert list(cache.iterdir()) == []


# --- count_tokens ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "tokens"),
    [
        (None, 2),
        ("", 2),
        ("gpt-4o", 2),
        ("gpt-4o-mini-2024-07-18", 2),
        ("chatgpt-4o-latest", 2),
        ("gpt-4.1-nano", 2),
        ("gpt-4.5-preview", 2),
        ("gpt-5", 2),
        ("gpt-5.1-codex", 2),
        ("gpt-oss-120b", 2),
        ("o1", 2),
        ("o1-mini", 2),
        ("o3-pro", 2),
        ("o4-mini", 2),
        ("openai/gpt-4o", 2),
        ("ft:gpt-4o-mini:acme::abc123", 2),
        ("gpt-4", 4),
        ("GPT-4-Turbo", 4),
        ("gpt-4-0613", 4),
        ("gpt-4-32k", 4),
        ("gpt-3.5-turbo", 4),
        ("gpt-35-turbo", 4),
        ("text-embedding-3-small", 4),
        ("text-embedding-ada-002", 4),
        ("openai:gpt-4", 4),
        ("azure/openai/gpt-3.5-turbo-16k", 4),
        ("ft:gpt-3.5-turbo:acme::abc123", 4),
        ("claude-sonnet-4", 2),
        ("llama-3.1-70b", 2),
        ("o1x", 2),
        ("gpt-40", 2),
    ],
)
def test_the_encoding_follows_the_model_id(model_id: str | None, tokens: int) -> None:
    assert count_tokens(JAPANESE, model_id) == tokens


def test_known_counts() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("hello world", "gpt-4") == 2
    assert count_tokens("tiktoken is great!", "gpt-4") == 6
    assert count_tokens("tiktoken is great!", "gpt-4o") == 6
    assert count_tokens("") == 0


def test_a_thousand_characters() -> None:
    text = ("The quick brown fox jumps over the lazy dog. " * 23)[:1000]
    assert len(text) == 1000
    assert count_tokens(text) == 223
    assert count_tokens(text, "gpt-4") == 223


def test_special_token_markers_count_as_plain_text() -> None:
    assert count_tokens("<|endoftext|>") == 7
    assert count_tokens("<|endoftext|>", "gpt-4") == 7


def test_a_lone_surrogate_is_counted_not_raised() -> None:
    assert count_tokens("\ud800x") == 2


def test_the_estimate_note() -> None:
    assert ESTIMATE_NOTE == (
        "Counted with OpenAI's o200k_base tokenizer (cl100k_base for gpt-4 and gpt-3.5 models); for other model "
        "families, whose tokenizers are not shipped, this is an estimate that typically differs from the provider's "
        "own count by roughly ±20%."
    )


# --- count_prompt_tokens --------------------------------------------------------------------------------


def test_the_cookbook_example_matches_the_openai_api() -> None:
    assert count_prompt_tokens({"messages": COOKBOOK_MESSAGES}, "gpt-4") == 129
    assert count_prompt_tokens({"messages": COOKBOOK_MESSAGES}, "gpt-3.5-turbo") == 129
    assert count_prompt_tokens({"messages": COOKBOOK_MESSAGES}, "gpt-4o") == 124
    assert count_prompt_tokens({"messages": COOKBOOK_MESSAGES}, "gpt-4o-mini") == 124


def test_a_prompt_is_one_user_message_plus_the_reply_priming() -> None:
    # 3 per message + "user" (1) + "hello world" (2) + 3 for the reply.
    assert count_prompt_tokens({"prompt": "hello world"}) == 9


def test_system_then_prompt() -> None:
    # (3 + "system" 1 + "You are terse." 4) + (3 + "user" 1 + "hello world" 2) + 3
    assert count_prompt_tokens({"system": "You are terse.", "prompt": "hello world"}) == 17


def test_a_ui_message_joins_its_text_parts_with_newlines() -> None:
    # "first\nsecond" is 3 tokens: 3 + "user" 1 + 3 + 3.
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert count_prompt_tokens({"messages": [{"role": "user", "parts": parts}]}) == 10
    message = UIMessage.model_validate({"role": "user", "parts": parts})
    assert count_prompt_tokens({"messages": [message]}) == 10


def test_a_ui_message_with_a_file_counts_its_text_parts_apart_and_the_file_as_zero() -> None:
    parts = [
        {"type": "text", "text": "Look:"},
        {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,iVBORw0KGgo="},
        {"type": "text", "text": "What is in it?"},
    ]
    # 3 + "user" 1 + "Look:" 2 + "What is in it?" 5 + 3
    assert count_prompt_tokens({"messages": [{"role": "user", "parts": parts}]}) == 14


def test_reasoning_and_tool_parts_count_zero() -> None:
    parts = [
        {"type": "reasoning", "text": "a long hidden chain of thought"},
        {"type": "tool-call", "toolCallId": "c1", "toolName": "search", "input": {"q": "capital of France"}},
        {"type": "text", "text": "Paris"},
    ]
    # 3 + "assistant" 1 + "Paris" 1 + 3
    assert count_prompt_tokens({"messages": [{"role": "assistant", "parts": parts}]}) == 8


def test_openai_content_parts_count_their_text_only() -> None:
    content = [
        {"type": "text", "text": "Look:"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "input_text", "text": "What is in it?"},
    ]
    assert count_prompt_tokens({"messages": [{"role": "user", "content": content}]}) == 14


def test_a_message_without_content_costs_its_framing() -> None:
    messages = [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Paris"},
    ]
    # (3 + "assistant" 1) + (3 + "tool" 1 + "Paris" 1) + 3
    assert count_prompt_tokens({"messages": messages}) == 12


def test_a_name_costs_its_tokens_plus_one() -> None:
    message = {"role": "user", "name": "alice", "content": "hello world"}
    # 3 + "user" 1 + "hello world" 2 + "alice" 1 + 1 + 3
    assert count_prompt_tokens({"messages": [message]}) == 11


def test_malformed_entries_are_skipped() -> None:
    messages: list[Any] = [
        "text",
        5,
        None,
        {"content": "no role"},
        {"role": 7, "content": "x"},
        {"role": "user", "parts": "not a list"},
        {"role": "user", "parts": [None, "x", {"type": "text", "text": 5}, {"type": "text"}, {"text": "untyped"}]},
        {"role": "user", "content": [None, 3, {"type": "text", "text": "hello world"}]},
    ]
    body = {"system": ["not", "a", "string"], "prompt": 5, "messages": messages}
    # (3 + "user" 1) twice for the part-less messages, (3 + "user" 1 + "hello world" 2), + 3
    assert count_prompt_tokens(body) == 17


def test_nothing_to_count_is_zero() -> None:
    assert count_prompt_tokens({}) == 0
    assert count_prompt_tokens({"messages": []}) == 0
    assert count_prompt_tokens({"messages": "hello world"}) == 0
    not_a_body: Any = ["hello world"]
    assert count_prompt_tokens(not_a_body) == 0


def test_the_prompt_follows_the_model_id() -> None:
    body = {"prompt": JAPANESE}
    assert count_prompt_tokens(body) == 9
    assert count_prompt_tokens(body, "gpt-4o") == 9
    assert count_prompt_tokens(body, "gpt-4") == 11
