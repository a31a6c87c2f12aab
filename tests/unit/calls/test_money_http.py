"""Money through real HTTP: Idempotency-Keys, disconnects, admission and the final frame, on both databases.

The app runs in-process (`downcity.local`) behind uvicorn on a real socket, against the demo upstream. Each test
gives the provider its own API key, so the demo upstream's request log counts that test's upstream calls only.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from downcity.accounts import AccountSpaces
from downcity.ai import AIService, Federation, OpenAICompatibleClient, Provider
from downcity.demo.upstream import bind_socket, build_server
from downcity.errors import DowncityHTTPError
from downcity.http.app import create_app
from downcity.ledger.outbox import Outbox
from downcity.local import open_local_runtime
from downcity.runtime import Runtime
from downcity.settings import Settings
from downcity.store.schema import ledger_entries, settle_outbox, usage_records
from downcity.types import ChargeDraft
from examples.federation import DeepSeekImages, per_image

ADMIN_KEY = "test-admin"
CITY = "shop"
FLAT = 500
IMAGE_PRICE = 20_000


class Upstream(Provider):
    def create_client(self, api_key: str, base_url: str) -> OpenAICompatibleClient:
        return OpenAICompatibleClient(api_key=api_key, base_url=base_url)


class Charging(Provider):
    """An action that charges more than its model's hold."""

    async def text(self, ctx: Any) -> dict[str, Any]:
        return {"output": "done", "charge": ChargeDraft(amount_microcredits=2 * FLAT)}


def _flat(ctx: Any, output: Any) -> ChargeDraft:
    return ChargeDraft(amount_microcredits=FLAT, ref=ctx.request_id)


def _per_token(ctx: Any, output: Any) -> ChargeDraft:
    usage = ctx.metering.usage
    return ChargeDraft(amount_microcredits=usage.input_tokens + 2 * usage.output_tokens)


def _federation(upstream_url: str) -> Federation:
    chat = Upstream("up", env_key="UP_KEY", base_url=upstream_url)
    images = DeepSeekImages("img", env_key="UP_KEY", base_url=upstream_url)
    charging = Charging("charging")
    ai = (
        AIService()
        .use(chat.model("flat", default=("text", "stream", "openai"), bill=_flat, hold_microcredits=FLAT))
        .use(chat.model("tokens", bill=_per_token, hold_microcredits=5_000))
        .use(images.model("pic", default="image", bill=per_image, hold_microcredits=IMAGE_PRICE))
        .use(charging.model("charging-held", hold_microcredits=FLAT))
        .use(charging.model("charging-unheld"))
    )
    return Federation(name="money").use(ai)


@dataclass
class App:
    runtime: Runtime
    http: httpx.AsyncClient
    upstream_root: str
    upstream_key: str
    token: str
    ended: asyncio.Event

    async def credit(self, amount: int, user: str = "u1") -> None:
        response = await self.http.post(
            "/v1/balance/credit",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            json={"city_id": CITY, "user_id": user, "amount_microcredits": amount, "idempotency_key": uuid.uuid4().hex},
        )
        assert response.status_code == 200, response.text

    def user(self, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"}
        return {**headers, "Idempotency-Key": key} if key is not None else headers

    async def upstream_calls(self) -> int:
        """Upstream requests that start work: completions and image job creates, not the manager's job polls
        (`/v1/images/jobs/<id>`), which come whenever a job falls due."""
        async with httpx.AsyncClient() as plain:
            items = (await plain.get(f"{self.upstream_root}/_demo/requests")).json()["items"]
        return sum(
            1 for item in items if item["key"] == self.upstream_key and not item["path"].startswith("/v1/images/jobs/")
        )

    async def balance(self, user: str = "u1") -> tuple[int, int]:
        value = await self.runtime.ledger.balance(f"{CITY}/{user}")
        return value.balance, value.held

    async def count(self, table: Any) -> int:
        async with self.runtime.db.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    async def usage_rows(self) -> list[Any]:
        async with self.runtime.db.connect() as conn:
            return list(await conn.execute(select(usage_records).order_by(usage_records.c.created_at_ms)))


@pytest.fixture
async def app(database_url: str, tmp_path: Path, demo_upstream: str) -> AsyncIterator[App]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    federation = _federation(demo_upstream)
    ended = asyncio.Event()
    federation.after(lambda ctx: ended.set())
    federation.on_error(lambda ctx: ended.set())
    runtime = await open_local_runtime(federation, settings)
    upstream_key = f"k-{uuid.uuid4().hex}"
    await runtime.env_store.set("UP_KEY", upstream_key)
    await runtime.cities.create("Shop", city_id=CITY)
    await runtime.refresh()
    issued = await runtime.security.issuer.apply(CITY, "u1")
    sock = bind_socket("127.0.0.1", 0)
    ready = asyncio.Event()
    server = build_server(create_app(runtime, manage_runtime=False), on_ready=ready.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait_for(ready.wait(), 20)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield App(runtime, http, demo_upstream.removesuffix("/v1"), upstream_key, issued.user_token, ended)
    server.should_exit = True
    await serving
    sock.close()
    await runtime.stop()


def _events(body: bytes) -> list[str]:
    return [line.removeprefix("data: ") for line in body.decode().split("\n\n") if line.startswith("data: ")]


async def test_concurrent_streams_with_one_key_and_other_prompts_reach_the_upstream_once(app: App) -> None:
    await app.credit(100_000)

    async def stream(index: int) -> httpx.Response:
        body = {"prompt": f"prompt {index} [[slow-stream:20]]"}
        return await app.http.post("/v1/ai/stream", json=body, headers=app.user("same-key"))

    responses = await asyncio.gather(*(stream(i) for i in range(20)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] + [409] * 19
    assert {response.json()["error"]["type"] for response in responses if response.status_code == 409} == {
        "idempotency_conflict"
    }
    assert (await app.upstream_calls(), await app.count(ledger_entries) - 1, len(await app.usage_rows())) == (1, 1, 1)


async def test_a_duplicate_in_flight_is_refused_and_never_reaches_the_upstream(app: App) -> None:
    await app.credit(100_000)
    body = {"prompt": "one answer [[slow-stream:50]]"}

    async with app.http.stream("POST", "/v1/ai/stream", json=body, headers=app.user("k1")) as first:
        chunks = first.aiter_bytes()
        await chunks.__anext__()
        second = await app.http.post("/v1/ai/stream", json=body, headers=app.user("k1"))
        rest = [data async for data in chunks]

    assert (first.status_code, second.status_code, second.json()["error"]["type"]) == (
        200,
        409,
        "idempotency_in_flight",
    )
    assert (b"[DONE]" in rest[-1], await app.upstream_calls()) == (True, 1)


async def test_replays_of_a_completed_chat_return_the_stored_answer_without_calling_the_upstream(app: App) -> None:
    await app.credit(100_000)
    body = {"model": "flat", "messages": [{"role": "user", "content": "hello"}]}

    first = await app.http.post("/v1/ai/chat/completions", json=body, headers=app.user("chat-1"))
    replays = [await app.http.post("/v1/ai/chat/completions", json=body, headers=app.user("chat-1")) for _ in range(5)]

    assert first.status_code == 200
    assert [(r.status_code, r.json(), r.headers["idempotent-replayed"]) for r in replays] == [
        (200, first.json(), "true")
    ] * 5
    assert (await app.upstream_calls(), await app.balance(), len(await app.usage_rows())) == (1, (100_000 - FLAT, 0), 1)


async def test_a_replayed_stream_returns_the_same_bytes_and_costs_nothing_more(app: App) -> None:
    await app.credit(100_000)
    body = {"prompt": "stream me"}

    first = await app.http.post("/v1/ai/stream", json=body, headers=app.user("s-1"))
    replay = await app.http.post("/v1/ai/stream", json=body, headers=app.user("s-1"))

    assert (first.status_code, replay.status_code, replay.content) == (200, 200, first.content)
    assert (await app.upstream_calls(), await app.balance()) == (1, (100_000 - FLAT, 0))


async def test_a_key_reused_with_another_body_is_a_409_before_any_work(app: App) -> None:
    await app.credit(100_000)
    await app.http.post("/v1/ai/text", json={"prompt": "a"}, headers=app.user("t-1"))

    other = await app.http.post("/v1/ai/text", json={"prompt": "b"}, headers=app.user("t-1"))

    assert (other.status_code, other.json()["error"]["type"]) == (409, "idempotency_conflict")
    assert (await app.upstream_calls(), await app.balance()) == (1, (100_000 - FLAT, 0))


async def test_a_failed_call_frees_its_key_so_a_retry_runs(app: App) -> None:
    await app.credit(100_000)
    body = {"prompt": "flaky [[fail:503]]"}

    failed = await app.http.post("/v1/ai/text", json=body, headers=app.user("retry-1"))
    retried = await app.http.post("/v1/ai/text", json=body, headers=app.user("retry-1"))

    assert (failed.status_code, retried.status_code) == (502, 502)
    assert (await app.upstream_calls(), await app.balance()) == (2, (100_000, 0))


async def _stream_until_text(app: App, path: str, body: dict[str, Any], marker: str) -> None:
    """Read a stream until `marker` arrived, then drop the connection."""
    async with app.http.stream("POST", path, json=body, headers=app.user()) as response:
        seen = b""
        async for data in response.aiter_bytes():
            seen += data
            if marker.encode() in seen:
                break


async def _ended_usage(app: App) -> list[Any]:
    """The usage rows once the call has ended server-side (its after or on_error hooks ran, after the commit)."""
    await asyncio.wait_for(app.ended.wait(), 20)
    return await app.usage_rows()


@pytest.mark.parametrize(
    ("path", "body", "marker"),
    [
        ("/v1/ai/stream", {"model": "tokens", "prompt": "alpha beta gamma delta [[slow-stream:200]]"}, "gamma"),
        (
            "/v1/ai/chat/completions",
            {
                "model": "tokens",
                "stream": True,
                "messages": [{"role": "user", "content": "alpha beta gamma delta [[slow-stream:200]]"}],
            },
            "gamma",
        ),
    ],
    ids=["ui", "openai"],
)
async def test_a_client_that_leaves_after_content_pays_for_what_it_received(
    app: App, path: str, body: dict[str, Any], marker: str
) -> None:
    await app.credit(100_000)

    await _stream_until_text(app, path, body, marker)

    [row] = await _ended_usage(app)
    assert (row.status, row.http_status, row.error_type, row.usage_source) == ("cancelled", 499, None, "estimated")
    assert row.output_tokens > 0 and row.input_tokens > 0
    charge = row.input_tokens + 2 * row.output_tokens
    assert (row.charge_microcredits, await app.balance()) == (charge, (100_000 - charge, 0))


async def test_a_client_that_leaves_before_any_content_pays_nothing(app: App) -> None:
    await app.credit(100_000)
    body = {"model": "tokens", "prompt": "late [[sleep:300]]"}

    async with app.http.stream("POST", "/v1/ai/stream", json=body, headers=app.user()) as response:
        async for data in response.aiter_bytes():
            assert b'"type":"start"' in data
            break

    [row] = await _ended_usage(app)
    assert (row.status, row.http_status, row.error_type) == ("cancelled", 499, "client_disconnected")
    assert (row.charge_microcredits, await app.balance()) == (0, (100_000, 0))


async def test_the_openai_stream_sends_done_only_after_the_charge_is_durable(app: App) -> None:
    await app.credit(100_000)
    body = {"model": "flat", "stream": True, "messages": [{"role": "user", "content": "hi there"}]}

    async with app.http.stream("POST", "/v1/ai/chat/completions", json=body, headers=app.user()) as response:
        seen = b""
        async for data in response.aiter_bytes():
            seen += data
            if b"[DONE]" in seen:
                rows_at_done = await app.usage_rows()
                balance_at_done = await app.balance()

    assert _events(seen)[-1] == "[DONE]"
    assert ([row.charge_microcredits for row in rows_at_done], balance_at_done) == ([FLAT], (100_000 - FLAT, 0))


async def test_image_creates_are_admitted_only_inside_a_hold(app: App) -> None:
    await app.credit(IMAGE_PRICE)

    responses = await asyncio.gather(
        *(app.http.post("/v1/ai/image/create", json={"prompt": f"cat {i}"}, headers=app.user()) for i in range(10))
    )

    assert sorted(r.status_code for r in responses) == [200] + [402] * 9
    assert await app.upstream_calls() == 1
    balance, held = await app.balance()
    assert (balance, held) in {(IMAGE_PRICE, IMAGE_PRICE), (0, 0)}


async def test_concurrent_image_creates_with_one_key_start_one_upstream_job(app: App) -> None:
    await app.credit(10 * IMAGE_PRICE)

    responses = await asyncio.gather(
        *(app.http.post("/v1/ai/image/create", json={"prompt": "cat"}, headers=app.user("img-1")) for _ in range(10))
    )

    jobs = {r.json()["job_id"] for r in responses if r.status_code == 200}
    refused = {r.json()["error"]["type"] for r in responses if r.status_code != 200}
    assert (len(jobs), refused <= {"idempotency_in_flight"}, await app.upstream_calls()) == (1, True, 1)


async def test_an_oversized_idempotency_key_is_a_400_naming_the_header(app: App) -> None:
    response = await app.http.post("/v1/ai/stream", json={"prompt": "x"}, headers=app.user("k" * 256))

    assert (response.status_code, response.json()["error"]["field"]) == (400, "Idempotency-Key")
    assert await app.upstream_calls() == 0


async def test_a_long_idempotency_key_still_streams_to_its_finish_and_is_charged(app: App) -> None:
    await app.credit(100_000)

    response = await app.http.post("/v1/ai/stream", json={"prompt": "x"}, headers=app.user("k" * 255))

    events = _events(response.content)
    assert (json.loads(events[-2])["type"], events[-1]) == ("finish", "[DONE]")
    assert await app.balance() == (100_000 - FLAT, 0)


async def test_an_after_hook_that_raises_does_not_fail_a_paid_call(app: App) -> None:
    await app.credit(100_000)

    def broken(ctx: Any) -> None:
        raise RuntimeError("hook bug")

    app.runtime.federation.after(broken)
    response = await app.http.post("/v1/ai/text", json={"prompt": "x"}, headers=app.user())

    assert (response.status_code, response.json()["metadata"]["charge"]["amount_microcredits"]) == (200, FLAT)
    assert await app.balance() == (100_000 - FLAT, 0)


def test_a_billable_model_without_a_hold_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="'free-lunch' is billable but declares no hold_microcredits"):
        Upstream("x").model("free-lunch", bill=_flat)


async def test_a_charge_the_ledger_cannot_take_goes_to_the_outbox_before_the_final_frame(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    await app.credit(100_000)
    ledger = app.runtime.ledger

    async def ledger_down(*args: Any, **kwargs: Any) -> Any:
        raise DowncityHTTPError(503, "ledger_unavailable", "the ledger could not commit")

    with monkeypatch.context() as patched:
        patched.setattr(ledger, "settle", ledger_down)
        response = await app.http.post("/v1/ai/stream", json={"prompt": "x"}, headers=app.user())
        owed = await Outbox(app.runtime.db).pending()

    assert (json.loads(_events(response.content)[-2])["type"], [p.amount for p in owed]) == ("finish", [FLAT])
    assert await app.balance() == (100_000, FLAT)
    assert await Outbox(app.runtime.db).drain(ledger, lambda user_id: True) == 1
    assert (await app.balance(), await app.count(settle_outbox)) == ((100_000 - FLAT, 0), 0)


async def _token(app: App, city_id: str, user_id: str) -> dict[str, str]:
    await app.runtime.cities.create(city_id.title(), city_id=city_id)
    await app.runtime.refresh()
    issued = await app.runtime.security.issuer.apply(city_id, user_id)
    return {"Authorization": f"Bearer {issued.user_token}"}


async def test_the_same_user_id_in_two_cities_has_two_accounts(app: App) -> None:
    await app.credit(100_000)
    other_city = await _token(app, "mall", "u1")

    refused = await app.http.post("/v1/ai/text", json={"prompt": "x"}, headers=other_city)
    mine = (await app.http.get("/v1/balance/me", headers=other_city)).json()

    assert (refused.status_code, refused.json()["error"]["type"]) == (402, "insufficient_balance")
    assert (mine["account_id"], mine["available"], await app.balance()) == ("mall/u1", 0, (100_000, 0))


async def test_cities_that_share_an_account_space_spend_one_balance(app: App) -> None:
    app.runtime.federation.accounts = AccountSpaces({"group": [CITY, "mall"]})
    await app.credit(100_000)
    other_city = await _token(app, "mall", "u1")

    answered = await app.http.post("/v1/ai/text", json={"prompt": "x"}, headers=other_city)
    mine = (await app.http.get("/v1/balance/me", headers=other_city)).json()

    assert (answered.status_code, mine["account_id"], mine["balance"]) == (200, "~group/u1", 100_000 - FLAT)


async def test_an_action_charge_is_admitted_inside_the_hold_and_never_exceeds_it(app: App) -> None:
    await app.credit(FLAT)

    first = await app.http.post("/v1/ai/text", json={"model": "charging-held", "prompt": "x"}, headers=app.user())
    second = await app.http.post("/v1/ai/text", json={"model": "charging-held", "prompt": "x"}, headers=app.user())

    assert (first.status_code, first.json()["metadata"]["charge"]["amount_microcredits"]) == (200, FLAT)
    assert (second.status_code, await app.balance()) == (402, (0, 0))


async def test_an_action_charge_on_a_model_without_a_hold_is_refused_not_given_away(app: App) -> None:
    await app.credit(100_000)

    response = await app.http.post("/v1/ai/text", json={"model": "charging-unheld", "prompt": "x"}, headers=app.user())

    assert (response.status_code, response.json()["error"]["type"]) == (502, "provider_error")
    assert await app.balance() == (100_000, 0)


async def test_an_image_create_whose_hook_writes_an_unstorable_value_is_refused_before_the_upstream(app: App) -> None:
    await app.credit(IMAGE_PRICE)

    def nul(ctx: Any) -> None:
        ctx.input["prompt"] += "\x00"

    app.runtime.federation.before(nul)
    response = await app.http.post("/v1/ai/image/create", json={"prompt": "cat"}, headers=app.user())

    assert (response.status_code, response.json()["error"]["type"]) == (502, "provider_error")
    assert (await app.upstream_calls(), await app.balance()) == (0, (IMAGE_PRICE, 0))
