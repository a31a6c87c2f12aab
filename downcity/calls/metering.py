"""Offline token counts for billing what a streaming client received before it left.

When a client disconnects before the upstream reports usage, the call is billed for the text it was sent,
counted here with OpenAI's BPE tokenizers (``tiktoken``). The rank tables ship with the package under
``encodings/`` (OpenAI's published ``.tiktoken`` files, byte for byte, gzipped), so nothing is downloaded:
``tiktoken``'s own registry fetches them over the network on first use, which a gateway cannot rely on.

Each encoding is read once per process, on first use (about 0.1-0.3 s of CPU), then shared.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import tiktoken
from pydantic import BaseModel

__all__ = ["ESTIMATE_NOTE", "count_prompt_tokens", "count_tokens"]

DEFAULT_ENCODING = "o200k_base"

ESTIMATE_NOTE = (
    "Counted with OpenAI's o200k_base tokenizer (cl100k_base for gpt-4 and gpt-3.5 models); for other model "
    "families, whose tokenizers are not shipped, this is an estimate that typically differs from the provider's "
    "own count by roughly ±20%."
)
"""How counts for models outside the OpenAI family are estimated (for invoices and usage notes)."""

# OpenAI's chat format (the openai-cookbook `num_tokens_from_messages`, for gpt-3.5-turbo-0613 and later):
# every message costs 3 tokens of framing besides its role and content, a `name` 1 more, and the
# reply is primed with 3 (`<|start|>assistant<|message|>`).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True)
class _Spec:
    """What `tiktoken_ext.openai_public` builds an encoding from, with the shipped file's name and digest."""

    file: str
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


# Patterns and special tokens as in tiktoken 0.14's tiktoken_ext/openai_public.py; the digests are the
# `expected_hash` values tiktoken checks its downloads against (of the uncompressed file).
_SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        file="o200k_base.tiktoken.gz",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Spec(
        file="cl100k_base.tiktoken.gz",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}

# Model-id prefixes, most specific first (as tiktoken.model maps them); a prefix must end the id or be
# followed by a non-alphanumeric character, so "o1-mini" is o1 but "o1x" is not, and "gpt-4o" is not "gpt-4".
_MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("gpt-oss", "o200k_base"),  # o200k_harmony: o200k_base's ranks plus special tokens plain text never meets
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),  # Azure deployment names
    ("text-embedding-ada-002", "cl100k_base"),
    ("text-embedding-3", "cl100k_base"),
)

_TEXT_PART_TYPES = frozenset({"text", "input_text"})
_load_lock = threading.Lock()


def count_tokens(text: str, model_id: str | None = None) -> int:
    """The number of tokens of `text` in the encoding of `model_id` (o200k_base when unknown or None).

    Special-token markers such as ``<|endoftext|>`` count as the plain text they are. Pass the upstream
    model name (``ModelConfig.upstream_model``) when the Downcity model id is an alias; an id with a
    provider prefix (``openai/gpt-4o``, ``openai:gpt-4o``) or a fine-tune id (``ft:gpt-4o-mini:org::x``) works too.
    """
    return len(_encoding(_encoding_name(model_id)).encode_ordinary(text))


def count_prompt_tokens(body: Mapping[str, Any], model_id: str | None = None) -> int:
    """The prompt tokens of a request body, as OpenAI counts a chat prompt.

    The body is read as Downcity sends it upstream: ``system`` (str) as a first system message, then
    ``messages`` (UIMessages ``{role, parts: [{type: "text", text}, ...]}``, whose text parts are joined with
    newlines when they carry no file, or OpenAI messages ``{role, content: str | [{type: "text", text}, ...]}``),
    then ``prompt`` (str) as a last user message. Each message costs `TOKENS_PER_MESSAGE` (3) plus the
    tokens of its role and its text (and of its ``name``, plus `TOKENS_PER_NAME`); a prompt with any message
    costs `TOKENS_PER_REPLY` (3) more for the priming of the reply. Non-text parts count 0; entries of the
    wrong shape (a message that is not an object or has no string role, a part that is not an object) are
    skipped: this never raises.
    """
    if not isinstance(body, Mapping):
        return 0
    encoding = _encoding(_encoding_name(model_id))

    def tokens(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    total = 0
    counted = 0
    for role, texts, name in _prompt_messages(body):
        total += TOKENS_PER_MESSAGE + tokens(role) + sum(tokens(text) for text in texts)
        if name is not None:
            total += TOKENS_PER_NAME + tokens(name)
        counted += 1
    return total + TOKENS_PER_REPLY if counted else 0


def _prompt_messages(body: Mapping[str, Any]) -> Iterator[tuple[str, list[str], str | None]]:
    """(role, texts, name) of each message the upstream would receive, in order."""
    system = body.get("system")
    if isinstance(system, str):
        yield "system", [system], None
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str | bytes):
        for message in messages:
            parsed = _message(message)
            if parsed is not None:
                yield parsed
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        yield "user", [prompt], None


def _message(message: Any) -> tuple[str, list[str], str | None] | None:
    if isinstance(message, BaseModel):
        message = message.model_dump(by_alias=True)
    if not isinstance(message, Mapping):
        return None
    role = message.get("role")
    if not isinstance(role, str):
        return None
    name = message.get("name")
    name = name if isinstance(name, str) else None
    if "parts" in message:
        return role, _ui_texts(message["parts"]), name
    content = message.get("content")
    if isinstance(content, str):
        return role, [content], name
    return role, _part_texts(content), name


def _ui_texts(parts: Any) -> list[str]:
    """A UIMessage's text, as `normalize_openai_compatible_body` sends it: one string unless a file is attached."""
    texts = _part_texts(parts)
    has_file = isinstance(parts, list) and any(isinstance(p, Mapping) and p.get("type") == "file" for p in parts)
    return texts if has_file or not texts else ["\n".join(texts)]


def _part_texts(parts: Any) -> list[str]:
    if not isinstance(parts, list):
        return []
    texts = []
    for part in parts:
        if isinstance(part, BaseModel):
            part = part.model_dump(by_alias=True)
        if isinstance(part, Mapping) and part.get("type") in _TEXT_PART_TYPES:
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


def _encoding_name(model_id: str | None) -> str:
    """The encoding of an OpenAI-family model id; `DEFAULT_ENCODING` for any other id."""
    if not model_id:
        return DEFAULT_ENCODING
    name = model_id.strip().lower().rpartition("/")[2]
    candidates = [name]
    if ":" in name:
        candidates.append(name.partition(":")[2])  # "openai:gpt-4o", "ft:gpt-4o-mini:org::id"
    for candidate in candidates:
        for prefix, encoding in _MODEL_PREFIXES:
            if candidate.startswith(prefix) and not candidate[len(prefix) : len(prefix) + 1].isalnum():
                return encoding
    return DEFAULT_ENCODING


def _encoding(name: str) -> tiktoken.Encoding:
    """The encoding `name`, built once per process from the shipped rank file."""
    with _load_lock:
        return _load_encoding(name)


@cache
def _load_encoding(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    return tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=_read_ranks(spec),
        special_tokens=spec.special_tokens,
    )


def _read_ranks(spec: _Spec) -> dict[bytes, int]:
    """The ``base64-token rank`` lines of a shipped ``.tiktoken.gz`` file, after checking its digest."""
    data = gzip.decompress(resources.files("downcity.calls").joinpath("encodings", spec.file).read_bytes())
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise RuntimeError(f"the shipped encoding file {spec.file} is corrupt (sha256 {digest}, want {spec.sha256})")
    fields = data.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))
