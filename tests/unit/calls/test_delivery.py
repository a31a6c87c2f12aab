"""What a stream delivered: whole SSE events forwarded, `[DONE]` held back, the delivered text for billing."""

from __future__ import annotations

import json

from downcity.calls.delivery import Delivery


def _chunk(content: str) -> bytes:
    return b"data: " + json.dumps({"choices": [{"delta": {"content": content}}]}).encode() + b"\n\n"


def test_whole_events_pass_and_done_is_held_back() -> None:
    delivery = Delivery()

    sent = delivery.add_openai_bytes(_chunk("Hel") + _chunk("lo") + b"data: [DONE]\n\n")

    assert (sent, delivery.held_back()) == (_chunk("Hel") + _chunk("lo"), b"data: [DONE]\n\n")
    assert (delivery.text, delivery.delivered) == ("Hello", True)


def test_an_event_split_across_chunks_is_sent_once_it_is_whole() -> None:
    delivery = Delivery()
    event = _chunk("word")

    first = delivery.add_openai_bytes(event[:7])
    second = delivery.add_openai_bytes(event[7:])

    assert (first, second, delivery.held_back()) == (b"", event, b"")


def test_a_role_only_chunk_is_not_content() -> None:
    delivery = Delivery()
    role = b"data: " + json.dumps({"choices": [{"delta": {"role": "assistant"}}]}).encode() + b"\n\n"

    delivery.add_openai_bytes(role)

    assert (delivery.delivered, delivery.text) == (False, "")


def test_ui_text_deltas_are_content_and_framing_is_not() -> None:
    framing, content = Delivery(), Delivery()

    framing.add_ui_chunks([{"type": "text-start", "id": "t"}, {"type": "text-end", "id": "t"}])
    content.add_ui_chunks([{"type": "text-start", "id": "t"}, {"type": "text-delta", "id": "t", "delta": "hi"}])

    assert (framing.delivered, content.delivered, content.text) == (False, True, "hi")


def test_the_estimate_counts_the_prompt_and_the_delivered_text() -> None:
    delivery = Delivery()
    delivery.add_ui_chunks([{"type": "text-delta", "id": "t", "delta": "hello world"}])

    usage = delivery.estimate({"prompt": "hello world"}, "gpt-4o")

    # "hello world" is 2 tokens; the prompt adds OpenAI's chat framing (3 per message + 3 for the reply + role).
    assert (usage.input_tokens, usage.output_tokens) == (9, 2)
