"""What every console route shares: the signed-in session, the form reader and the page renderer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request
from pydantic import ValidationError
from starlette.responses import HTMLResponse

from downcity.errors import DowncityHTTPError, invalid
from downcity.http.console.rendering import render
from downcity.http.console.session import SESSION_COOKIE, Session, SessionSigner
from downcity.runtime import Runtime
from downcity.store.values import check_text

# (path, label) of every page, in the navigation's order; the quotas page is the slot the quota admin fills.
NAV = (
    ("/console", "Overview"),
    ("/console/cities", "Cities"),
    ("/console/tokens", "Tokens"),
    ("/console/keys", "Provider keys"),
    ("/console/balances", "Balances"),
    ("/console/usage", "Usage"),
    ("/console/jobs", "Image jobs"),
    ("/console/quotas", "Quotas"),
    ("/console/system", "System"),
)
MAX_FORM_BYTES = 64 * 1024


class SignInRequired(Exception):
    """The request carries no valid console session."""


class CsrfRejected(Exception):
    """A form arrived without this session's CSRF token."""


@dataclass(frozen=True)
class Problem:
    """An API error as a page shows it."""

    status: int
    message: str


def problem(error: DowncityHTTPError | ValidationError) -> Problem:
    """The status and message of an error raised by the admin routes' logic or their body models."""
    if isinstance(error, DowncityHTTPError):
        return Problem(error.status, error.message)
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"])
    return Problem(422, f"{field}: {first['msg']}" if field else str(first["msg"]))


@dataclass(frozen=True)
class Console:
    """A signed-in operator's request: the runtime, the session and its CSRF token."""

    runtime: Runtime
    signer: SessionSigner
    session: Session
    csrf: str

    def page(self, template: str, active: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
        """Render a page of the signed-in console."""
        shared = {"csrf": self.csrf, "nav": NAV, "active": active, "signed_in": True}
        return render(template, {**shared, **context}, status_code)

    def failed(self, template: str, active: str, context: dict[str, Any], error: Problem) -> HTMLResponse:
        """Render a page showing `error` with the API's status code."""
        return self.page(template, active, {**context, "error": error}, error.status)


def signer_of(request: Request) -> SessionSigner:
    """The app's session signer."""
    signer: SessionSigner = request.app.state.console_signer
    return signer


async def get_console(request: Request) -> Console:
    """The signed-in operator, or `SignInRequired` (a user token or any other header opens nothing)."""
    signer = signer_of(request)
    session = signer.verify(request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise SignInRequired
    runtime: Runtime = request.app.state.runtime
    return Console(runtime, signer, session, signer.csrf(session.session_id))


ConsoleDep = Annotated[Console, Depends(get_console)]


class Form:
    """A submitted URL-encoded form; every value is checked by the edge rule the JSON routes apply."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    @classmethod
    async def read(cls, request: Request) -> Form:
        """The request's form fields (the last value of a repeated field), 413 past 64 KiB."""
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise DowncityHTTPError(413, "body_too_large", f"a console form is at most {MAX_FORM_BYTES} bytes")
        parsed = parse_qs(body.decode("utf-8", errors="surrogateescape"), keep_blank_values=True)
        values = {name: items[-1] for name, items in parsed.items()}
        for name, value in values.items():
            check_text(name, "form")
            check_text(value, name)
        return cls(values)

    def text(self, name: str) -> str:
        """A required field, stripped; 422 naming it when empty."""
        value = self.values.get(name, "").strip()
        if not value:
            raise invalid(f"{name} is required", name)
        return value

    def optional(self, name: str) -> str | None:
        """A field, stripped, or None when empty."""
        value = self.values.get(name, "").strip()
        return value or None

    def integer(self, name: str) -> int:
        """A required whole number; 422 naming the field otherwise."""
        value = self.text(name).replace(",", "").replace("_", "")
        if not value.lstrip("-").isdigit() or len(value) > 20:
            raise invalid(f"{name} must be a whole number", name)
        return int(value)


async def read_form(request: Request, console: Console) -> Form:
    """The form of a signed-in POST, refused unless it carries the session's CSRF token."""
    form = await Form.read(request)
    if not console.signer.check_csrf(console.session.session_id, form.values.get("csrf")):
        raise CsrfRejected
    return form
