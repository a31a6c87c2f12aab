"""Templates, filters and the response headers every console page carries."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse

HERE = Path(__file__).parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

# Scripts and styles come only from /console/static; result images may be data: URLs or a provider's https URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: https:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def microcredits(value: int | None) -> str:
    """An integer amount with thousands separators (`1,500,000`)."""
    return "—" if value is None else f"{value:,}"


def when(moment_or_ms: int | str | None) -> Markup:
    """A `<time>` element for epoch ms or an ISO-8601 time, in UTC; console.js rewrites its text into the
    browser's time zone."""
    if moment_or_ms is None:
        return Markup("—")
    if isinstance(moment_or_ms, str):
        moment = datetime.fromisoformat(moment_or_ms.replace("Z", "+00:00")).astimezone(UTC)
        ms = int(moment.timestamp() * 1000)
    else:
        ms = moment_or_ms
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" data-ms="{}">{}</time>').format(iso, ms, text)


def percent(part: int, whole: int) -> str:
    """`part` of `whole` as a percentage with one decimal (`12.5%`), or `—` when `whole` is 0."""
    return "—" if whole == 0 else f"{100 * part / whole:.1f}%"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(microcredits=microcredits, when=when, percent=percent, escape=escape)
    return env


ENVIRONMENT = _environment()


def render(name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """The template `name` rendered as an HTML response with the console's headers."""
    defaults: dict[str, Any] = {"signed_in": False, "error": None, "notice": None, "form": {}}
    html = ENVIRONMENT.get_template(name).render(**{**defaults, **context})
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)
