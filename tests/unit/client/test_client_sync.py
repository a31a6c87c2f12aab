"""The sync clients against the real HTTP app served by uvicorn in a thread, over real sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from downcity.ai.federation import Federation
from downcity.client import AdminClient, DowncityError, UserClient
from downcity.demo.federation import build_demo_federation
from downcity.demo.upstream import bind_socket, build_server
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.settings import Settings
from downcity.types import TextPart
from tests.conftest import listen_port

ADMIN_KEY = "test-admin"
CITY = "sync"


class RuntimeServer:
    """The app over an in-process runtime, served in a thread with its own event loop.

    The runtime is opened inside that loop because database connections belong to the loop that made them.
    """

    def __init__(self, federation: Federation, settings: Settings) -> None:
        self.federation = federation
        self.settings = settings
        self.sock = bind_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self.failure = exc
        finally:
            # Also wakes __enter__ when startup failed, so it reports the failure instead of waiting.
            self.ready.set()

    async def _serve(self) -> None:
        runtime = await open_local_runtime(self.federation, self.settings)
        await runtime.env_store.set("DEMO_API_KEY", "k")
        # A city that exists before serving, so user calls do not wait for the city cache to poll.
        await runtime.cities.create("Sync app", city_id=CITY)
        await runtime.refresh()
        server = build_server(create_app(runtime, manage_runtime=False), on_ready=self.ready.set)
        self.loop, self.stopping = asyncio.get_running_loop(), asyncio.Event()
        serving = asyncio.create_task(server.serve(sockets=[self.sock]))
        await self.stopping.wait()
        server.should_exit = True
        await serving
        await runtime.stop()

    def __enter__(self) -> RuntimeServer:
        self.thread.start()
        if not self.ready.wait(20) or self.failure is not None:
            raise RuntimeError("the app did not start") from self.failure
        return self

    def __exit__(self, *_: object) -> None:
        assert self.loop is not None and self.stopping is not None
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(20)
        self.sock.close()


@pytest.fixture
def server(
    database_url: str, tmp_path: Path, demo_upstream: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RuntimeServer]:
    monkeypatch.setenv("DOWNCITY_DEMO_UPSTREAM_URL", demo_upstream)
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    with RuntimeServer(build_demo_federation(), settings) as running:
        yield running


@pytest.fixture
def admin(server: RuntimeServer) -> Iterator[AdminClient]:
    with AdminClient(server.url, admin_key=ADMIN_KEY) as client:
        yield client


@pytest.fixture
def user(server: RuntimeServer, admin: AdminClient) -> Iterator[UserClient]:
    admin.balance.credit(CITY, "u1", 1_000_000, "seed-u1")
    issued = admin.tokens.apply(city_id=CITY, user_id="u1")
    with UserClient(server.url, city_id=CITY, user_token=issued.user_token) as client:
        yield client


def test_sync_admin_creates_and_lists_cities(admin: AdminClient) -> None:
    created = admin.cities.create("Extension", city_id="ext")

    assert (created.city_id, created.status) == ("ext", "active")
    assert [city.city_id for city in admin.cities.list()] == [CITY, "ext"]


def test_sync_user_text(user: UserClient) -> None:
    message = user.ai.text("hello sync")

    assert message.parts == [TextPart(text="Echo: hello sync")]
    # The demo prices 1 per input token and 2 per output token: "hello sync" in, "Echo: hello sync" out.
    assert message.metadata["charge"]["amount_microcredits"] == 2 + 2 * 3
    assert user.balance().balance == 1_000_000 - (2 + 2 * 3)


def test_sync_user_stream(user: UserClient) -> None:
    chunks = list(user.ai.stream("hi there"))

    assert (chunks[0]["type"], chunks[-1]["type"]) == ("start", "finish")
    assert "".join(c["delta"] for c in chunks if c["type"] == "text-delta") == "Echo: hi there"


def test_sync_user_models(user: UserClient) -> None:
    assert [model.id for model in user.ai.models()] == ["demo-chat", "demo-vision", "demo-image"]


def test_sync_error_carries_status_type_and_field(admin: AdminClient) -> None:
    with pytest.raises(DowncityError) as caught:
        admin.tokens.apply(city_id=CITY, user_id="u1", ttl=0)

    error = caught.value
    assert (error.status, error.type, error.field) == (422, "invalid_request", "ttl")


def test_sync_refused_connection_raises_connection_error() -> None:
    client = UserClient(f"http://127.0.0.1:{listen_port()}", city_id=CITY, user_token="t", retries=1)
    with client, pytest.raises(DowncityError) as caught:
        client.balance()

    assert (caught.value.status, caught.value.type) == (0, "connection_error")
    assert caught.value.message.startswith("ConnectError after 2 attempts")
