"""The operators' console in a real headless Chromium against the served app.

The app is the one every ingress replica serves, here over the in-process runtime (`downcity.local`) behind
uvicorn on a real socket, on PostgreSQL, calling the demo upstream, as tests/unit/calls/test_money_http.py runs
it. The System page's cluster report is checked on the Ray cluster in test_console_system.py. Playwright drives
Debian's `/usr/bin/chromium` (installed by `.ci/run`; Playwright downloads no browser). Every test signs in
through the form, as an operator would, and reads the numbers the pages render.
Screenshots of every page at 1280x800 and 390x844 go to `.screenshots/console/` (git-ignored).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from downcity.demo.federation import DEMO_KEY_ENV, DEMO_UPSTREAM_ENV, build_demo_federation
from downcity.demo.upstream import bind_socket, build_server
from downcity.http.app import create_app
from downcity.local import open_local_runtime
from downcity.settings import Settings
from tests.conftest import SKIP_POSTGRES, TEST_ADMIN_KEY, TEST_MASTER_KEY, DatabaseFactory
from tests.integration.conftest import ServedApp, eventually

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".screenshots" / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
PAGES = ("", "/cities", "/tokens", "/keys", "/balances", "/usage", "/jobs", "/quotas", "/system")


@pytest.fixture(scope="module")
async def served(
    demo_upstream: str, database_factory: DatabaseFactory, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServedApp]:
    """The demo Federation's app on a real socket, shared by this module's tests (each makes its own city)."""
    previous = os.environ.get(DEMO_UPSTREAM_ENV)
    os.environ[DEMO_UPSTREAM_ENV] = demo_upstream
    try:
        federation = build_demo_federation()
    finally:
        if previous is None:
            del os.environ[DEMO_UPSTREAM_ENV]
        else:
            os.environ[DEMO_UPSTREAM_ENV] = previous
    database_url = await database_factory.url("sqlite" if SKIP_POSTGRES else "postgresql")
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("console"),
        database_url=database_url,
        admin_key=TEST_ADMIN_KEY,
        master_key=TEST_MASTER_KEY,
    )
    runtime = await open_local_runtime(federation, settings)
    await runtime.env_store.set(DEMO_KEY_ENV, "sk-demo-console-000000")
    await runtime.refresh()
    sock = bind_socket("127.0.0.1", 0)
    ready = asyncio.Event()
    server = build_server(create_app(runtime, manage_runtime=False), on_ready=ready.set)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.wait_for(ready.wait(), 20)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=30
        ) as admin:
            yield ServedApp(url=url, database_url=database_url, admin=admin)
    finally:
        server.should_exit = True
        await serving
        sock.close()
        await runtime.stop()
        await database_factory.release(database_url)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser, served: ServedApp) -> AsyncIterator[BrowserContext]:
    made = await browser.new_context(base_url=served.url, viewport=DESKTOP, timezone_id="Europe/Paris")
    made.set_default_timeout(20_000)
    yield made
    await made.close()


async def sign_in(context: BrowserContext, key: str = TEST_ADMIN_KEY) -> Page:
    """Sign in with the keyboard only: the key field has focus, Enter submits."""
    page = await context.new_page()
    await page.goto("/console/sign-in")
    await expect(page.get_by_label("Admin key")).to_be_focused()
    await page.keyboard.type(key)
    async with page.expect_navigation():
        await page.keyboard.press("Enter")
    return page


async def create_city(page: Page) -> str:
    city_id = f"c{uuid.uuid4().hex[:10]}"
    await page.goto("/console/cities")
    await page.get_by_label("Name").fill("Console city")
    await page.get_by_label("City id").fill(city_id)
    await page.get_by_role("button", name="Create city").click()
    await expect(page.get_by_role("status")).to_have_text(f"City {city_id} created.")
    return city_id


async def issue_token(page: Page, city_id: str, user_id: str) -> tuple[str, str]:
    """(token, token id) as the Tokens page shows them, once."""
    await page.goto("/console/tokens")
    # The revoke form beside it has its own city and user fields: these are the issue form's.
    await page.locator("#t-city").select_option(city_id)
    await page.locator("#t-user").fill(user_id)
    await page.get_by_label("Metadata").fill('{"plan": "pro"}')
    await page.get_by_role("button", name="Issue token").click()
    token = await page.get_by_label("User token").input_value()
    token_id = await page.locator("#issued-token-id").inner_text()
    await expect(page.locator("#issued")).to_contain_text('{"plan": "pro"}')
    return token, token_id


async def open_account(page: Page, city_id: str, user_id: str) -> None:
    await page.goto("/console/balances")
    await page.get_by_label("City").select_option(city_id)
    await page.get_by_label("User id").fill(user_id)
    await page.get_by_role("button", name="Find").click()
    await expect(page.locator("#account h2")).to_have_text(f"{city_id}/{user_id}")


async def credit(page: Page, city_id: str, user_id: str, amount: int) -> dict[str, str]:
    """Credit through the form; returns the submitted fields (idempotency key included)."""
    await open_account(page, city_id, user_id)
    await page.get_by_label("Amount in microcredits").fill(str(amount))
    fields: dict[str, str] = await page.locator("#change-form").evaluate(
        "form => Object.fromEntries(new FormData(form))"
    )
    await page.get_by_role("button", name="Apply").click()
    await expect(page.locator("#entry")).to_contain_text(f"Credited {amount:,} µc to {city_id}/{user_id}")
    return fields


async def call_text(served: ServedApp, city_id: str, token: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        return await client.post(
            "/v1/ai/text",
            headers={"Authorization": f"Bearer {token}", "X-City-Id": city_id},
            json={"model": "demo-chat", "prompt": "hello console"},
        )


async def usage_items(served: ServedApp, city_id: str) -> list[dict[str, Any]]:
    response = await served.admin.get("/v1/usage/list", params={"city_id": city_id})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_calls_made_with_a_console_issued_token_show_in_usage_and_the_overview_chart(
    context: BrowserContext, served: ServedApp
) -> None:
    page = await sign_in(context)
    city_id = await create_city(page)
    token, _ = await issue_token(page, city_id, "alice")
    await credit(page, city_id, "alice", 10_000)
    for _ in range(3):
        assert (await call_text(served, city_id, token)).status_code == 200
    recorded = await eventually(lambda: usage_items(served, city_id), lambda items: len(items) == 3)
    tokens = sum(item["input_tokens"] + item["output_tokens"] for item in recorded)
    charges = [item["charge_microcredits"] for item in recorded]
    assert all(charge > 0 for charge in charges)

    await page.goto("/console/usage")
    await page.get_by_label("City").fill(city_id)
    await page.get_by_role("button", name="Filter").click()
    rows = page.locator("#usage tbody tr")
    await expect(rows).to_have_count(3)
    await expect(page).to_have_url(
        f"{served.url}/console/usage?city_id={city_id}&user_id=&model=&status=&since=&until="
    )
    assert await page.locator("#usage [data-charge]").all_inner_texts() == [f"{charge:,}" for charge in charges]
    assert {await row.get_attribute("data-request") for row in await rows.all()} == {i["request_id"] for i in recorded}
    csv = await page.request.get(f"/console/usage.csv?city_id={city_id}")
    lines = (await csv.text()).strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("created_at_ms,request_id,city_id")

    await page.goto("/console?window=24h&bucket=hour&series=city")
    row = page.locator(f'table[data-metric] tr[data-key="{city_id}"] [data-value="total"]')
    assert await row.all_inner_texts() == ["3", "0", f"{tokens:,}", f"{sum(charges):,}"]
    drawn = await page.evaluate(
        """key => Object.fromEntries(window.dcCharts.map(({metric, chart}) => {
               const index = chart.series.findIndex(s => s.label === key);
               return [metric, chart.data[index].reduce((a, b) => a + b, 0)];
           }))""",
        city_id,
    )
    assert drawn == {"requests": 3, "errors": 0, "total_tokens": tokens, "charge_microcredits": sum(charges)}
    top = page.locator("#top-users tbody tr", has_text=f"{city_id}/alice")
    assert await top.locator("td").all_inner_texts() == [
        f"{city_id}/alice",
        "3",
        f"{sum(charges):,}",
        f"{10_000 - sum(charges):,}",
    ]


async def test_pausing_a_city_refuses_its_calls_and_a_revoked_token_is_refused(
    context: BrowserContext, served: ServedApp
) -> None:
    page = await sign_in(context)
    city_id = await create_city(page)
    token, token_id = await issue_token(page, city_id, "bob")
    await credit(page, city_id, "bob", 50_000)
    assert (await call_text(served, city_id, token)).status_code == 200

    await page.goto("/console/cities")
    city_row = page.locator(f'tr[data-city="{city_id}"]')
    await city_row.get_by_role("button", name="Pause").click()
    await expect(page.get_by_role("status")).to_have_text(f"City {city_id} is paused.")
    await expect(page.locator(f'tr[data-city="{city_id}"] .badge')).to_have_text("paused")
    refused = await eventually(lambda: call_text(served, city_id, token), lambda r: r.status_code == 403)
    assert refused.json()["error"]["type"] == "city_paused"

    await page.locator(f'tr[data-city="{city_id}"]').get_by_role("button", name="Activate").click()
    await expect(page.get_by_role("status")).to_have_text(f"City {city_id} is active.")
    await eventually(lambda: call_text(served, city_id, token), lambda r: r.status_code == 200)

    await page.goto("/console/tokens")
    await page.get_by_label("Token id").fill(token_id)
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status")).to_have_text(f"Revoked token {token_id}.")
    revoked = await eventually(lambda: call_text(served, city_id, token), lambda r: r.status_code == 401)
    assert revoked.json()["error"]["type"] == "token_revoked"


async def test_provider_keys_are_set_and_rotated_showing_only_previews(
    context: BrowserContext, served: ServedApp
) -> None:
    page = await sign_in(context)
    name = f"CONSOLE_{uuid.uuid4().hex[:8].upper()}_KEY"
    first, second = f"sk-first-{uuid.uuid4().hex}", f"sk-second-{uuid.uuid4().hex}"
    for value in (first, second):
        await page.goto("/console/keys")
        await page.get_by_label("Name").fill(name)
        await page.get_by_label("Value").fill(value)
        await page.get_by_role("button", name="Store key").click()
        await expect(page.get_by_role("status")).to_contain_text(f"{name} stored")
        html = await page.content()
        assert value not in html
        preview = await page.locator(f'tr[data-key="{name}"] [data-preview]').inner_text()
        listed = {item["key"]: item["preview"] for item in (await served.admin.get("/v1/env/list")).json()["items"]}
        assert preview == listed[name] and preview != value
    await page.locator(f'tr[data-key="{name}"]').get_by_role("button", name="Remove").click()
    await expect(page.get_by_role("status")).to_have_text(f"{name} removed.")
    assert name not in {item["key"] for item in (await served.admin.get("/v1/env/list")).json()["items"]}


async def test_a_replayed_credit_form_credits_once(context: BrowserContext, served: ServedApp) -> None:
    page = await sign_in(context)
    city_id = await create_city(page)
    fields = await credit(page, city_id, "carol", 7_000)
    first_entry = await page.locator("#entry").inner_text()

    replay = await page.request.post("/console/balances/change", form=fields)
    assert replay.status == 200
    assert first_entry in await replay.text()
    balance = await served.admin.get("/v1/balance/get", params={"city_id": city_id, "user_id": "carol"})
    assert balance.json()["balance"] == 7_000
    await open_account(page, city_id, "carol")
    await expect(page.locator('[data-balance="balance"]')).to_have_text("7,000")
    await expect(page.locator("#history tbody tr")).to_have_count(1)


async def test_signing_out_refuses_the_old_session_cookie_everywhere(
    context: BrowserContext, served: ServedApp
) -> None:
    page = await sign_in(context)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    cookie = next(c for c in await context.cookies() if c["name"] == "dc_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{served.url}/console/sign-in")

    async def with_old_cookie() -> httpx.Response:
        async with httpx.AsyncClient(base_url=served.url, cookies={"dc_console": cookie["value"]}) as client:
            return await client.get("/console/cities")

    refused = await eventually(with_old_cookie, lambda r: r.status_code == 303)
    assert refused.headers["location"] == "/console/sign-in"


async def test_a_user_token_and_a_forged_cookie_open_nothing(context: BrowserContext, served: ServedApp) -> None:
    _, _, user_token = await served.new_user()
    async with httpx.AsyncClient(base_url=served.url) as client:
        as_user = await client.get("/console/cities", headers={"Authorization": f"Bearer {user_token}"})
        assert (as_user.status_code, as_user.headers["location"]) == (303, "/console/sign-in")
    forged = f"v1.{uuid.uuid4().hex}.1.99999999999999.{'A' * 43}"
    for value in (forged, "anything"):
        async with httpx.AsyncClient(base_url=served.url, cookies={"dc_console": value}) as client:
            shown = await client.get("/console/cities")
            assert (shown.status_code, shown.headers["location"]) == (303, "/console/sign-in")
            posted = await client.post("/console/cities/create", data={"name": "x", "city_id": "forged"})
            assert posted.status_code == 401
    assert "forged" not in {c["city_id"] for c in (await served.admin.get("/v1/cities/list")).json()["items"]}

    page = await sign_in(context, key=user_token)
    await expect(page.get_by_role("alert")).to_have_text("That is not the admin key.")
    assert [c["name"] for c in await context.cookies() if c["name"] == "dc_console"] == []


async def test_every_page_fits_a_desktop_and_a_phone_screen(context: BrowserContext, served: ServedApp) -> None:
    page = await sign_in(context)
    city_id = await create_city(page)
    token, _ = await issue_token(page, city_id, "dana")
    await credit(page, city_id, "dana", 50_000)
    assert (await call_text(served, city_id, token)).status_code == 200
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        created = await client.post(
            "/v1/ai/image/create", headers={"Authorization": f"Bearer {token}"}, json={"prompt": "a lighthouse"}
        )
    assert created.status_code == 200, created.text
    job_id = created.json()["job_id"]

    async def job_status() -> str:
        listed = await served.admin.get("/v1/jobs/list", params={"city_id": city_id})
        return str(listed.json()["items"][0]["status"])

    await eventually(job_status, lambda status: status == "succeeded")
    await page.goto("/console/jobs?status=succeeded")
    image = page.locator(f'tr[data-job="{job_id}"] img')
    await expect(image).to_have_count(1)
    assert await image.evaluate("img => img.complete && img.naturalWidth > 0")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    overflowing = {}
    for size in (DESKTOP, PHONE):
        await page.set_viewport_size(size)
        for path in PAGES:
            query = f"?city_id={city_id}&user_id=dana" if path == "/balances" else ""
            await page.goto(f"/console{path}{query}")
            await expect(page.locator("main h1")).to_be_visible()
            name = (path.strip("/") or "overview") + f"-{size['width']}x{size['height']}.png"
            await page.screenshot(path=SCREENSHOTS / name, full_page=True)
            overflowing[name] = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert {name: pixels for name, pixels in overflowing.items() if pixels > 0} == {}
    await page.goto("/console/sign-in")
    await page.screenshot(path=SCREENSHOTS / f"sign-in-{PHONE['width']}x{PHONE['height']}.png", full_page=True)
