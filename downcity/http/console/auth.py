"""Signing in with the admin key and out again; the key is checked and forgotten, never stored or logged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from downcity.http.console.context import CsrfRejected, Form, get_console, signer_of
from downcity.http.console.rendering import PAGE_HEADERS, render
from downcity.http.console.session import (
    SESSION_COOKIE,
    SESSION_TTL_S,
    SIGN_IN_COOKIE,
    SIGN_IN_TTL_S,
    SessionSigner,
)

router = APIRouter(prefix="/console", include_in_schema=False)


def _secure(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "")
    return request.url.scheme == "https" or forwarded.split(",")[0].strip() == "https"


def _sign_in_page(request: Request, message: str | None, status_code: int) -> HTMLResponse:
    nonce = SessionSigner.sign_in_nonce()
    csrf = signer_of(request).csrf(f"sign-in:{nonce}")
    response = render("sign_in.html", {"csrf": csrf, "message": message, "signed_in": False}, status_code)
    response.set_cookie(
        SIGN_IN_COOKIE,
        nonce,
        max_age=SIGN_IN_TTL_S,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_form(request: Request) -> HTMLResponse:
    """The sign-in form."""
    return _sign_in_page(request, None, 200)


@router.post("/sign-in", response_model=None)
async def sign_in(request: Request) -> Response:
    """Exchange the admin key for a session cookie; a user token or a wrong key is refused."""
    signer = signer_of(request)
    form = await Form.read(request)
    nonce = request.cookies.get(SIGN_IN_COOKIE, "")
    if not nonce or not signer.check_csrf(f"sign-in:{nonce}", form.values.get("csrf")):
        return _sign_in_page(request, "The form expired; sign in again.", 403)
    key = form.values.get("admin_key", "")
    if not request.app.state.runtime.security.admin.verify(key.strip()):
        return _sign_in_page(request, "That is not the admin key.", 401)
    cookie, _ = signer.issue()
    response = RedirectResponse("/console", status_code=303, headers=PAGE_HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_TTL_S,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(SIGN_IN_COOKIE, path="/console")
    return response


@router.post("/sign-out", response_model=None)
async def sign_out(request: Request) -> Response:
    """End the session on every replica and clear the cookie."""
    console = await get_console(request)
    form = await Form.read(request)
    if not console.signer.check_csrf(console.session.session_id, form.values.get("csrf")):
        raise CsrfRejected
    await console.signer.sign_out(console.session)
    response = RedirectResponse("/console/sign-in", status_code=303, headers=PAGE_HEADERS)
    response.delete_cookie(SESSION_COOKIE, path="/console")
    return response
