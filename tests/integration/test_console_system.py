"""The console's System page on the Ray cluster shows what `downcity status` reports."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.conftest import TEST_ADMIN_KEY
from tests.integration.conftest import ServedApp

pytestmark = pytest.mark.ray

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def test_the_system_page_lists_every_deployment_and_the_ledger_and_job_manager(served: ServedApp) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as browser:
        form = CSRF.search((await browser.get("/console/sign-in")).text)
        assert form is not None
        await browser.post("/console/sign-in", data={"csrf": form.group(1), "admin_key": TEST_ADMIN_KEY})
        page = await browser.get("/console/system")
    assert page.status_code == 200
    deployments = set(re.findall(r'<tr data-deployment="([^"]+)">', page.text))
    assert {"Ingress", "provider-deepseek", "provider-deepseek-images", "provider-local-tools"} <= deployments
    assert re.search(r"<td>Ledger</td><td>[^<]+</td><td><span class=\"badge ok\">ok</span>", page.text)
    assert re.search(r"<td>JobManager</td><td>[^<]+</td><td><span class=\"badge ok\">ok</span>", page.text)
    assert "node(s) alive" in page.text
