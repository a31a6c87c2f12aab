"""The console on the in-process app (both databases): sessions, CSRF, error messages and empty states.

The browser tests (tests/integration/test_console.py) drive the same pages in Chromium on the Ray cluster.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.routing import APIRoute

from downcity.http.console import actions, auth, pages
from downcity.http.console.session import SESSION_COOKIE, SessionSigner
from downcity.secrets import MasterKey
from downcity.store.schema import usage_records
from tests.conftest import TEST_ADMIN_KEY
from tests.unit.http.fakes import CITY_ID, App
from tests.unit.http.test_routes_async import _sync_calls

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def sign_in(http: httpx.AsyncClient) -> None:
    form = await http.get("/console/sign-in")
    token = CSRF.search(form.text)
    assert token is not None
    signed_in = await http.post("/console/sign-in", data={"csrf": token.group(1), "admin_key": TEST_ADMIN_KEY})
    assert (signed_in.status_code, signed_in.headers["location"]) == (303, "/console")


@pytest.fixture
async def browser(app: App) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, like a browser, signed in through the form."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://downcity.test") as http:
        await sign_in(http)
        yield http


async def csrf_of(http: httpx.AsyncClient, path: str = "/console/cities") -> str:
    found = CSRF.search((await http.get(path)).text)
    assert found is not None
    return found.group(1)


async def test_the_session_cookie_is_http_only_strict_and_expiring(app: App) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="https://downcity.test") as http:
        token = CSRF.search((await http.get("/console/sign-in")).text)
        assert token is not None
        signed_in = await http.post("/console/sign-in", data={"csrf": token.group(1), "admin_key": TEST_ADMIN_KEY})
    cookie = next(v for k, v in signed_in.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE))
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert attributes == {"httponly", "max-age", "path", "samesite", "secure"}
    assert "SameSite=strict" in cookie and "Max-Age=28800" in cookie
    assert TEST_ADMIN_KEY not in cookie


def signer(app: App, master_key: MasterKey | None = None) -> SessionSigner:
    return SessionSigner(master_key or app.runtime.master_key, app.runtime.security)


async def test_a_cookie_verifies_only_under_the_master_key_it_was_signed_with(app: App) -> None:
    own, _ = signer(app).issue()
    foreign, _ = signer(app, MasterKey.generate()).issue()
    assert signer(app).verify(own) is not None
    assert signer(app).verify(foreign) is None


async def test_a_tampered_or_expired_cookie_is_refused(app: App) -> None:
    cookie, _ = signer(app).issue()
    version, session_id, issued, expires, mac = cookie.split(".")
    longer = ".".join((version, session_id, issued, str(int(expires) + 10**9), mac))
    expired = ".".join((version, session_id, issued, "1", mac))
    assert [signer(app).verify(value) for value in (longer, expired, "", "v1.a.b")] == [None] * 4


async def test_signing_out_revokes_the_session_for_every_signer(app: App) -> None:
    cookie, session = signer(app).issue()
    await signer(app).sign_out(session)
    assert signer(app).verify(cookie) is None


async def test_a_form_without_the_sessions_csrf_token_changes_nothing(app: App, browser: httpx.AsyncClient) -> None:
    for token in ("", "forged"):
        refused = await browser.post("/console/cities/create", data={"csrf": token, "name": "X", "city_id": "nocsrf"})
        assert refused.status_code == 403
    assert "nocsrf" not in {city.city_id for city in await app.runtime.cities.list()}


async def test_the_admin_key_reaches_no_response_and_no_log(app: App, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://downcity.test") as http:
        await sign_in(http)
        pages = [await http.get(f"/console{path}") for path in ("", "/cities", "/keys", "/system", "/usage")]
    assert [page.status_code for page in pages] == [200] * 5
    assert all(TEST_ADMIN_KEY not in page.text for page in pages)
    assert caplog.records
    assert TEST_ADMIN_KEY not in caplog.text


async def test_an_api_error_shows_its_message_and_status(app: App, browser: httpx.AsyncClient) -> None:
    csrf = await csrf_of(browser)
    debit = {
        "csrf": csrf,
        "city_id": CITY_ID,
        "user_id": "nobody",
        "direction": "debit",
        "amount_microcredits": "5",
        "idempotency_key": "k1",
    }
    short = await browser.post("/console/balances/change", data=debit)
    assert short.status_code == 402
    assert 'role="alert"><strong>Error 402:</strong>' in short.text
    nul = await browser.post("/console/cities/create", data={"csrf": csrf, "name": "a\x00b"})
    assert nul.status_code == 422
    assert "name: must not contain U+0000" in nul.text


async def test_empty_pages_say_what_to_do_next(browser: httpx.AsyncClient) -> None:
    usage = await browser.get("/console/usage", params={"city_id": "nowhere"})
    assert "No usage matches" in usage.text
    jobs = await browser.get("/console/jobs", params={"status": "failed"})
    assert "No failed image jobs" in jobs.text
    quotas = await browser.get("/console/quotas", params={"city_id": CITY_ID})
    assert f"No quota binds {CITY_ID}" in quotas.text


async def test_the_local_runner_system_page_shows_readiness_without_a_cluster(browser: httpx.AsyncClient) -> None:
    system = await browser.get("/console/system")
    assert system.status_code == 200
    assert "runs in-process (the local runner)" in system.text
    assert 'id="checks"' in system.text or "registers no readiness checks" in system.text


async def test_pages_forbid_framing_caching_and_foreign_scripts(browser: httpx.AsyncClient) -> None:
    page = await browser.get("/console")
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in page.headers["content-security-policy"]


async def test_a_key_set_through_the_console_shows_only_its_preview(app: App, browser: httpx.AsyncClient) -> None:
    value = "sk-console-secret-0123456789"
    stored = await browser.post(
        "/console/keys/set", data={"csrf": await csrf_of(browser), "key": "X_KEY", "value": value}
    )
    assert stored.status_code == 200
    assert value not in stored.text
    preview = next(entry.preview for entry in await app.runtime.env_store.list() if entry.key == "X_KEY")
    assert f"<code data-preview>{preview}</code>" in stored.text


async def test_the_csv_export_quotes_cells_and_defuses_formulas(app: App, browser: httpx.AsyncClient) -> None:
    values = {"city_id": CITY_ID, "pathway": "text", "status": "ok", "http_status": 200, "created_at_ms": 1}
    async with app.runtime.db.begin() as conn:
        await conn.execute(usage_records.insert(), [{**values, "request_id": "r1", "user_id": "=HYPERLINK(1,2)"}])
    exported = await browser.get("/console/usage.csv", params={"city_id": CITY_ID})
    assert exported.headers["content-type"] == "text/csv; charset=utf-8"
    lines = exported.text.splitlines()
    assert len(lines) == 2
    assert lines[1].startswith(f'1,r1,{CITY_ID},"\'=HYPERLINK(1,2)",text,')


def test_console_routes_stay_out_of_the_api_schema_and_off_the_thread_pool(app: App) -> None:
    routers = (pages.router, actions.router, auth.router)
    console = [route for router in routers for route in router.routes if isinstance(route, APIRoute)]
    assert len(console) > 15
    assert not [path for path in app.app.openapi()["paths"] if path.startswith("/console")]
    assert {route.path: _sync_calls(route.dependant) for route in console if _sync_calls(route.dependant)} == {}


async def test_a_quota_set_in_the_console_is_stored_listed_and_removed(app: App, browser: httpx.AsyncClient) -> None:
    csrf = await csrf_of(browser, "/console/quotas")
    form = {"csrf": csrf, "city_id": CITY_ID, "id": "starter", "metadata": '{"plan": "starter"}'}
    bad = await browser.post("/console/quotas/set", data={**form, "requests_per_minute": "many"})
    assert (bad.status_code, "requests_per_minute must be a whole number" in bad.text) == (422, True)
    assert await app.runtime.quota_store.list(CITY_ID) == []
    stored = await browser.post("/console/quotas/set", data={**form, "requests_per_minute": "30"})
    assert (stored.status_code, f"Quota starter of {CITY_ID} set." in stored.text) == (200, True)
    [quota] = await app.runtime.quota_store.list(CITY_ID)
    assert (quota.id, quota.metadata, quota.requests_per_minute, quota.tokens_per_minute) == (
        "starter",
        {"plan": "starter"},
        30,
        None,
    )
    listed = await browser.get("/console/quotas", params={"city_id": CITY_ID})
    assert 'data-quota="starter"' in listed.text and "plan=starter" in listed.text
    removed = await browser.post("/console/quotas/remove", data={"csrf": csrf, "city_id": CITY_ID, "id": "starter"})
    assert (removed.status_code, f"Quota starter of {CITY_ID} removed." in removed.text) == (200, True)
    assert await app.runtime.quota_store.list(CITY_ID) == []
    again = await browser.post("/console/quotas/remove", data={"csrf": csrf, "city_id": CITY_ID, "id": "starter"})
    assert again.status_code == 404
