"""The provider hop's byte relay on the real local Ray cluster: each provider replica publishes its relay port
through Serve, the handle's router picks the replica, and only a caller holding the relay token runs anything."""

from __future__ import annotations

import aiohttp
import pytest
from ray import serve

from actors.gateway import relay_token, router_picker
from downcity.ai.context import CityInfo, UserInfo
from downcity.errors import DowncityHTTPError
from downcity.gateway.actions import ActionRequest
from downcity.gateway.relay import TOKEN_HEADER, RelayClient
from downcity.secrets import MasterKey
from downcity.settings import Settings
from tests.conftest import TEST_MASTER_KEY
from tests.integration.conftest import APP_NAME, ServedApp

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]

PROVIDER = "provider-local-tools"


def _reverse(prompt: str) -> ActionRequest:
    return ActionRequest(
        request_id="relay-test",
        pathway="text",
        model_id="reverse",
        input={"prompt": prompt},
        user=UserInfo(user_id="u-relay"),
        city=CityInfo(city_id="c-relay"),
    )


async def test_a_replica_picked_by_the_router_runs_actions_for_the_token_holder_only(served: ServedApp) -> None:
    handles = {"local-tools": serve.get_deployment_handle(PROVIDER, app_name=APP_NAME)}
    pick = router_picker(handles)
    host, port = await pick("local-tools")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {TOKEN_HEADER: "not the token"}):
            async with session.post(f"http://{host}:{port}/text", data=b"not a pickle", headers=headers) as answer:
                assert answer.status == 401
    client = RelayClient(pick, relay_token(MasterKey.load(Settings(master_key=TEST_MASTER_KEY))))
    try:
        outcome = await client.text("local-tools", _reverse("abc"))
        assert outcome.output.parts[0].model_dump()["text"] == "cba"
        with pytest.raises(DowncityHTTPError) as unknown:
            await client.text("nobody", _reverse("abc"))
        assert (unknown.value.status, unknown.value.message) == (503, "no deployment for provider 'nobody'")
    finally:
        await client.aclose()
