"""The console's System page on the Ray cluster shows what `downcity status` reports (and is screenshotted)."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import async_playwright, expect

from tests.conftest import TEST_ADMIN_KEY
from tests.integration.conftest import ServedApp
from tests.integration.test_console import CHROMIUM, DESKTOP, SCREENSHOTS

pytestmark = pytest.mark.ray


async def test_the_system_page_lists_every_deployment_and_the_ledger_and_job_manager(served: ServedApp) -> None:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(base_url=served.url, viewport=DESKTOP)
        await page.goto("/console/sign-in")
        await page.get_by_label("Admin key").fill(TEST_ADMIN_KEY)
        async with page.expect_navigation():
            await page.get_by_role("button", name="Sign in").click()
        await page.goto("/console/system")
        await expect(page.get_by_role("heading", name="System")).to_be_visible()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=SCREENSHOTS / "system-ray-1280x800.png", full_page=True)
        html = await page.content()
        await browser.close()
    deployments = set(re.findall(r'<tr data-deployment="([^"]+)">', html))
    assert {"ingress", "provider-deepseek", "provider-deepseek-images", "provider-local-tools"} <= deployments
    assert re.search(r'<td>Ledger</td><td>[^<]+</td><td><span class="badge ok">ok</span>', html)
    assert re.search(r'<td>JobManager</td><td>[^<]+</td><td><span class="badge ok">ok</span>', html)
    assert "node(s) alive" in html
