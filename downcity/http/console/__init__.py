"""The operators' web console at `/console`: server-rendered pages over the admin routes' own functions.

Jinja2 renders every page on the server and htmx (vendored, like the chart library uPlot) swaps the usage
results in place; nothing is fetched from outside the app. See docs/operators/console.md.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from downcity.http.console import actions, auth, pages
from downcity.http.console.context import CsrfRejected, SignInRequired
from downcity.http.console.pages import SystemProbe
from downcity.http.console.rendering import PAGE_HEADERS, STATIC_DIR, render
from downcity.http.console.session import SessionSigner
from downcity.runtime import Runtime

__all__ = ["SystemProbe", "install_console"]


async def _to_sign_in(request: Request, _: Exception) -> Response:
    if request.headers.get("HX-Request") == "true":
        return Response(status_code=401, headers={**PAGE_HEADERS, "HX-Redirect": "/console/sign-in"})
    if request.method in ("GET", "HEAD"):
        return RedirectResponse("/console/sign-in", status_code=303, headers=PAGE_HEADERS)
    return render("refused.html", {"signed_in": False, "message": "Your session has ended: sign in again."}, 401)


async def _csrf_refused(_: Request, __: Exception) -> Response:
    message = "This form was not issued to your session (a missing or stale CSRF token); reload the page."
    return render("refused.html", {"signed_in": False, "message": message}, 403)


def install_console(app: FastAPI, runtime: Runtime, system: SystemProbe | None = None) -> None:
    """Serve the console and its assets from `app`; `system` reports the cluster on the System page."""
    app.state.console_signer = SessionSigner(runtime.master_key, runtime.security)
    app.state.console_system = system
    app.mount("/console/static", StaticFiles(directory=STATIC_DIR), name="console-static")
    for module in (auth, pages, actions):
        app.include_router(module.router)
    app.add_exception_handler(SignInRequired, _to_sign_in)
    app.add_exception_handler(CsrfRejected, _csrf_refused)
