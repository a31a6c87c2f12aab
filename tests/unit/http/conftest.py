"""The in-process app over a fake upstream, on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.http.fakes import App, running_app


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[App]:
    async with running_app(database_url, tmp_path / "data") as running:
        yield running
