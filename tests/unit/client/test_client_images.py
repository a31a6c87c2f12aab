"""Image jobs through the async clients: the real app and JobManager in-process, the demo upstream's jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from downcity.ai.federation import Federation
from downcity.ai.service import AIService
from downcity.client import AsyncAdminClient, AsyncUserClient, DowncityError
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.settings import Settings
from downcity.types import FilePart
from examples.federation import DeepSeekImages, image_hold, per_image

ADMIN_KEY = "test-admin"
BASE_URL = "http://downcity.test"
CREDIT = 1_000_000


def _image_federation(upstream_url: str) -> Federation:
    provider = DeepSeekImages("images", env=["IMAGES_API_KEY"], env_key="IMAGES_API_KEY", base_url=upstream_url)
    image = provider.model(
        "demo-image", name="Demo Image", default="image", bill=per_image, hold_microcredits=image_hold
    )
    return Federation(name="images").use(AIService().use(image))


@pytest.fixture
async def clients(
    database_url: str, tmp_path: Path, demo_upstream: str
) -> AsyncIterator[tuple[AsyncAdminClient, AsyncUserClient]]:
    settings = Settings(data_dir=tmp_path, database_url=database_url, admin_key=ADMIN_KEY)
    runtime = await open_local_runtime(_image_federation(demo_upstream), settings)
    await runtime.env_store.set("IMAGES_API_KEY", "k")
    await runtime.env.refresh()
    transport = httpx.ASGITransport(app=create_app(runtime, manage_runtime=False))
    admin = AsyncAdminClient(BASE_URL, admin_key=ADMIN_KEY, transport=transport)
    await admin.cities.create("Web app", city_id="web")
    await runtime.refresh()
    await admin.balance.credit("web", "u1", CREDIT, "seed-u1")
    issued = await admin.tokens.apply(city_id="web", user_id="u1")
    user = AsyncUserClient(BASE_URL, city_id="web", user_token=issued.user_token, transport=transport)
    async with admin, user:
        yield admin, user
    await runtime.stop()


async def test_image_create_returns_a_queued_job(clients: tuple[AsyncAdminClient, AsyncUserClient]) -> None:
    _, user = clients

    job = await user.ai.image_create("a cat", model="demo-image")

    assert (job.job_id.startswith("job_"), job.status, job.poll_after_ms) == (True, "queued", 200)


async def test_wait_image_returns_the_finished_job_with_its_images(
    clients: tuple[AsyncAdminClient, AsyncUserClient],
) -> None:
    _, user = clients
    created = await user.ai.image_create("two cats", count=2)

    job = await user.ai.wait_image(created.job_id, timeout=20)

    assert (job.job_id, job.status, job.done) == (created.job_id, "succeeded", True)
    assert job.result is not None
    assert [(p.type, p.media_type) for p in job.result.parts if isinstance(p, FilePart)] == [
        ("file", "image/png"),
        ("file", "image/png"),
    ]
    balance = await user.balance()
    assert (balance.balance, balance.held) == (CREDIT - 2 * 20_000, 0)


async def test_wait_image_returns_a_failed_job(clients: tuple[AsyncAdminClient, AsyncUserClient]) -> None:
    _, user = clients
    created = await user.ai.image_create("a cat [[image-fail]]")

    job = await user.ai.wait_image(created.job_id, timeout=20)

    assert (job.status, job.result, job.error) == ("failed", None, "content policy violation")
    balance = await user.balance()
    assert (balance.balance, balance.held) == (CREDIT, 0)


async def test_wait_image_times_out_on_an_unfinished_job(
    clients: tuple[AsyncAdminClient, AsyncUserClient],
) -> None:
    _, user = clients
    created = await user.ai.image_create("a cat [[image-never]]")

    with pytest.raises(DowncityError) as caught:
        await user.ai.wait_image(created.job_id, timeout=0.5)

    assert (caught.value.status, caught.value.type) == (0, "timeout")


async def test_unknown_image_job_raises_404(clients: tuple[AsyncAdminClient, AsyncUserClient]) -> None:
    _, user = clients

    with pytest.raises(DowncityError) as caught:
        await user.ai.image_result("job_missing")

    assert (caught.value.status, caught.value.type) == (404, "not_found")


async def test_admin_lists_jobs_by_status(clients: tuple[AsyncAdminClient, AsyncUserClient]) -> None:
    admin, user = clients
    created = await user.ai.image_create("a cat")
    await user.ai.wait_image(created.job_id, timeout=20)

    jobs = await admin.jobs.list(status="succeeded", city_id="web")

    assert [(j.job_id, j.status, j.city_id, j.user_id, j.model_id) for j in jobs] == [
        (created.job_id, "succeeded", "web", "u1", "demo-image")
    ]
    assert await admin.jobs.list(status="failed") == []
