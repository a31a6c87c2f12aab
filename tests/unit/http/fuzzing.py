"""Fuzzing the in-process app from its own OpenAPI schema: schemathesis generates, we send and judge.

Cases are generated up front (hypothesis runs synchronously) and then sent through httpx's ASGI transport
in the test's event loop, where the runtime's database connections live. Every case goes out once with the
admin key and once with a user token; a quarter of the AI calls meet an upstream that puts the provider key
in its error. A response fails when it is a 5xx (other than that upstream's 502), a 4xx outside the error
shape, or carries the canary provider key anywhere.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core import NOT_SET
from schemathesis.core.errors import InvalidSchema
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation

from downcity.store.values import MAX_JSON_DEPTH
from tests.conftest import TEST_ADMIN_KEY
from tests.unit.http.fakes import CANARY_KEY, CITY_ID, FAKE_KEY_ENV, App

# Strings and numbers no route may store or forward: each hostile case plants one in a generated case.
HOSTILE_STRINGS = ("nul\x00here", "lone\ud800surrogate", "\udfff", "\x00")
HOSTILE_JSON = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "9223372036854775808",
    "[" * (MAX_JSON_DEPTH + 2) + "]" * (MAX_JSON_DEPTH + 2),
)
_ERROR_TYPE = re.compile(r"^[a-z][a-z0-9_]*$")
# State changes that would starve later user cases: undone after each successful one.
_STATEFUL = frozenset({"/v1/cities/pause", "/v1/tokens/revoke", "/v1/env/set", "/v1/env/remove"})
_AI_PATHS = frozenset({"/v1/ai/text", "/v1/ai/stream", "/v1/ai/chat/completions"})


def _quote(text: str, safe: str, encoding: str | None, errors: str | None) -> str:
    return quote(text, safe, "utf-8", "surrogatepass")


@dataclass(frozen=True)
class Request:
    """One request as sent: JSON bodies are pre-encoded so hostile literals (NaN, deep nesting) survive."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    content: bytes | None

    def url(self) -> str:
        """The path and query string, percent-encoded as UTF-8 (a lone surrogate as its three bytes)."""
        if not self.query:
            return self.path
        return f"{self.path}?{urlencode(self.query, quote_via=_quote)}"

    def describe(self) -> str:
        """The request, for a failure message."""
        body = self.content.decode("utf-8", "backslashreplace")[:300] if self.content else ""
        return f"{self.method} {self.path} query={self.query!r} headers={self.headers!r} body={body}"


@dataclass
class Report:
    """What a fuzz run sent and what it found."""

    cases: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)


def operations(schema: dict[str, Any]) -> list[APIOperation]:
    """Every operation of the app's OpenAPI schema."""
    return [result.ok() for result in schemathesis.openapi.from_dict(schema).get_all_operations()]


def generate(operation: APIOperation, mode: GenerationMode, count: int) -> list[Any]:
    """Up to `count` schemathesis cases for `operation` (none when it has nothing to make invalid)."""
    cases: list[Any] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
    )
    def collect(case: Any) -> None:
        cases.append(case)

    # An operation without parameters or body has no invalid case to make, and schemathesis cannot make
    # some invalid arrays (a required one-item list): keep what it generated until then.
    with contextlib.suppress(Unsatisfiable, InvalidSchema):
        collect()
    return cases[:count]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def to_request(case: Any, *, city_header: bool = True) -> Request:
    """The generated case as a request without credentials (and, unless `city_header`, without X-City-Id)."""
    dropped = {"authorization"} if city_header else {"authorization", "x-city-id"}
    headers = {k: _text(v) for k, v in (case.headers or {}).items() if k.lower() not in dropped}
    query = [
        (str(k), _text(item)) for k, v in (case.query or {}).items() for item in (v if isinstance(v, list) else [v])
    ]
    content = None
    if case.body is not None and case.body is not NOT_SET:
        raw = case.body if isinstance(case.body, bytes) else json.dumps(case.body)
        content = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
        headers["content-type"] = case.media_type or "application/json"
    return Request(case.method.upper(), case.formatted_path, query, headers, content)


def _plant(value: Any, hostile: str, seed: int) -> tuple[Any, bool]:
    """`value` with one string leaf (or, failing that, the whole value) replaced by a marker for `hostile`."""
    if isinstance(value, dict) and value:
        key = sorted(value, key=str)[seed % len(value)]
        inner, planted = _plant(value[key], hostile, seed // 7)
        return {**value, key: inner}, planted
    if isinstance(value, list) and value:
        index = seed % len(value)
        inner, planted = _plant(value[index], hostile, seed // 7)
        return [*value[:index], inner, *value[index + 1 :]], planted
    return "\x1fHOSTILE\x1f", True


def hostile(request: Request, seed: int) -> Request:
    """The request with one hostile string in the query, a body leaf, or a header; or a hostile JSON literal."""
    if request.content is not None and request.headers.get("content-type") == "application/json":
        body = json.loads(request.content)
        if seed % 2:
            literal = HOSTILE_JSON[seed // 2 % len(HOSTILE_JSON)]
            planted, _ = _plant(body, literal, seed)
            raw = json.dumps(planted).replace('"\\u001fHOSTILE\\u001f"', literal)
        else:
            text = HOSTILE_STRINGS[seed // 2 % len(HOSTILE_STRINGS)]
            planted, _ = _plant(body, text, seed)
            raw = json.dumps(planted).replace("\\u001fHOSTILE\\u001f", json.dumps(text)[1:-1])
        return Request(request.method, request.path, request.query, request.headers, raw.encode())
    text = HOSTILE_STRINGS[seed % len(HOSTILE_STRINGS)]
    if request.query:
        index = seed % len(request.query)
        name, _ = request.query[index]
        query = [*request.query[:index], (name, text), *request.query[index + 1 :]]
        return Request(request.method, request.path, query, request.headers, request.content)
    return Request(request.method, request.path, [("model", text)], {**request.headers, "Idempotency-Key": text}, None)


def requests_for(schema: dict[str, Any], positive: int, negative: int) -> Iterator[Request]:
    """Per operation: `positive` valid cases and a hostile twin of each, and up to `negative` invalid ones."""
    seed = 0
    for operation in operations(schema):
        for case in generate(operation, GenerationMode.POSITIVE, positive):
            seed += 1
            # A generated X-City-Id almost never names the token's city: keep it in a quarter of the cases only,
            # so most user cases get past authentication.
            request = to_request(case, city_header=seed % 4 == 0)
            yield request
            yield hostile(request, seed)
        for case in generate(operation, GenerationMode.NEGATIVE, negative):
            yield to_request(case)


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode("latin-1", "replace"), v.encode("utf-8", "surrogatepass")) for k, v in headers.items()]


def judge(request: Request, response: httpx.Response, leaky_upstream: bool) -> list[str]:
    """What is wrong with `response`: a 5xx, a 4xx outside the error shape, or the canary key anywhere."""
    found: list[str] = []
    if CANARY_KEY in response.text or any(CANARY_KEY in value for value in response.headers.values()):
        found.append("the canary provider key is in the response")
    status = response.status_code
    if status >= 500:
        upstream_fault = leaky_upstream and status == 502 and _error(response).get("type") == "upstream_error"
        if not upstream_fault:
            found.append(f"{status} {response.text[:200]}")
    elif status >= 400:
        error = _error(response)
        if not (
            set(error) in ({"type", "message"}, {"type", "message", "field"})
            and _ERROR_TYPE.match(str(error["type"]))
            and isinstance(error["message"], str)
            and isinstance(error.get("field", ""), str)
        ):
            found.append(f"{status} outside the error shape: {response.text[:200]}")
    return [f"{finding}\n    for {request.describe()}" for finding in found]


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
    return error if isinstance(error, dict) else {}


async def _restore(app: App) -> None:
    """Undo what a fuzzed admin call may have done to the fuzzing user's city, token or provider key."""
    await app.runtime.cities.activate(CITY_ID)
    await app.runtime.env_store.set(FAKE_KEY_ENV, CANARY_KEY)
    await app.runtime.refresh()
    app.user_token = (await app.runtime.security.issuer.apply(CITY_ID, "alice")).user_token


async def fuzz(app: App, requests: Iterator[Request]) -> Report:
    """Send every request with the admin key and with the user token, and judge each response."""
    report = Report()
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://downcity.test", timeout=30) as client:
        for request in requests:
            for token in (TEST_ADMIN_KEY, app.user_token):
                leaky = request.path in _AI_PATHS and report.cases % 4 == 0
                app.upstream.error_code = CANARY_KEY if leaky else None
                headers = [*_encoded(request.headers), (b"authorization", f"Bearer {token}".encode())]
                response = await client.request(request.method, request.url(), headers=headers, content=request.content)
                report.cases += 1
                report.by_status[response.status_code] = report.by_status.get(response.status_code, 0) + 1
                report.findings.extend(judge(request, response, leaky))
                if request.path in _STATEFUL and response.status_code < 400:
                    await _restore(app)
    return report
