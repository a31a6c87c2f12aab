"""Database errors never print their statement's parameters: those are user data and key material."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import IntegrityError

from downcity.store import Database
from downcity.store.schema import cities

MARKER = "sk-user-data-that-must-not-be-logged"


async def test_a_database_error_hides_the_statement_parameters(db: Database) -> None:
    row = {"city_id": "acme", "name": MARKER, "status": "active", "created_at_ms": 1, "updated_at_ms": 1}
    async with db.begin() as conn:
        await conn.execute(cities.insert().values(**row))
    with pytest.raises(IntegrityError) as caught:
        async with db.begin() as conn:
            await conn.execute(cities.insert().values(**row))

    assert MARKER not in str(caught.value)
    assert MARKER not in repr(caught.value)
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(caught.value)
