"""The Federation of the resilience tests: retrying, falling back, breaking, timing out and key-pooled models.

Every provider talks to the session's demo upstream (`EXAMPLE_UPSTREAM_URL`), except `blackhole`, whose
address accepts no connection, so its connect timeout fires: each process importing this module listens on a
port of its own with a full accept queue (the kernel then drops new connection attempts).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from downcity import AIService, ChargeDraft, Context, Federation
from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.resilience import Breaker, Retry, Timeouts

UPSTREAM_URL = os.environ.get("EXAMPLE_UPSTREAM_URL", "http://127.0.0.1:9000/v1")


def _full_listener() -> tuple[str, list[socket.socket]]:
    """A local URL whose accept queue is full, and the sockets that keep it so (they live with the process)."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(2):
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    return f"http://127.0.0.1:{port}/v1", [server, *fillers]


BLACKHOLE_URL, _BLACKHOLE_SOCKETS = _full_listener()
KEY = "DEEPSEEK_API_KEY"
POOL = ["POOL_A_KEY", "POOL_B_KEY"]
HOLD = 5_000
BREAKER_FAILURES = 2
BREAKER_OPEN_S = 2.0
KEY_REST_S = 2.0
FIRST_BYTE_S = 1.0


def per_token(ctx: Context, output: Any) -> ChargeDraft:
    """1 microcredit per input token and 2 per output token."""
    usage = ctx.metering.usage
    return ChargeDraft(amount_microcredits=usage.input_tokens + 2 * usage.output_tokens, ref=ctx.request_id)


retrying = OpenAICompatibleProvider(
    "retrying",
    env_key=KEY,
    base_url=UPSTREAM_URL,
    retry=Retry(attempts=3, on=(429, "5xx"), backoff_s=0.05),
    timeouts=Timeouts(first_byte_s=FIRST_BYTE_S, total_s=30),
)
steady = OpenAICompatibleProvider("steady", env_key=KEY, base_url=UPSTREAM_URL)
fragile = OpenAICompatibleProvider(
    "fragile", env_key=KEY, base_url=UPSTREAM_URL, breaker=Breaker(failures=BREAKER_FAILURES, open_s=BREAKER_OPEN_S)
)
blackhole = OpenAICompatibleProvider("blackhole", env_key=KEY, base_url=BLACKHOLE_URL, timeouts=Timeouts(connect_s=0.5))
pooled = OpenAICompatibleProvider(
    "pooled", env_key=POOL, base_url=UPSTREAM_URL, retry=Retry(attempts=2, backoff_s=0.01), key_rest_s=KEY_REST_S
)

steady_chat = steady.model("steady-chat", bill=per_token, hold_microcredits=HOLD)
retrying_chat = retrying.model(
    "retrying-chat", default=("text", "stream", "openai"), bill=per_token, hold_microcredits=HOLD
)
falling_chat = retrying.model(
    "falling-chat",
    retry=Retry(attempts=2, backoff_s=0.01),
    fallback=[{"on": "error", "match": {"status": [502, 503, 504]}, "model": steady_chat}],
    bill=per_token,
    hold_microcredits=HOLD,
)
fragile_chat = fragile.model(
    "fragile-chat",
    fallback=[{"on": "error", "match": {"type": ["provider_unavailable"]}, "model": "steady-chat"}],
    bill=per_token,
    hold_microcredits=HOLD,
)
fragile_alone = fragile.model("fragile-alone", bill=per_token, hold_microcredits=HOLD)
unreachable = blackhole.model("unreachable", bill=per_token, hold_microcredits=HOLD)
pooled_chat = pooled.model("pooled-chat", bill=per_token, hold_microcredits=HOLD)

ai = AIService()
for model in (steady_chat, retrying_chat, falling_chat, fragile_chat, fragile_alone, unreachable, pooled_chat):
    ai.use(model)
federation = Federation(name="resilience").use(ai)
