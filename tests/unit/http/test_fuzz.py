"""Fuzzing every operation of the in-process app, as admin and as a user, on SQLite and PostgreSQL."""

from __future__ import annotations

from tests.unit.http.fakes import App
from tests.unit.http.fuzzing import fuzz, requests_for

# Per operation and backend: 6 valid cases, their 6 hostile twins and up to 6 invalid ones, each sent twice.
POSITIVE_CASES = 6
NEGATIVE_CASES = 6


async def test_no_generated_request_gets_a_5xx_a_shapeless_error_or_the_provider_key(app: App) -> None:
    report = await fuzz(app, requests_for(app.app.openapi(), POSITIVE_CASES, NEGATIVE_CASES))

    print(f"fuzz: {report.cases} cases, statuses {dict(sorted(report.by_status.items()))}")
    assert report.cases >= 500
    assert report.findings == []
