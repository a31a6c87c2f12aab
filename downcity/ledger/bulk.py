"""Bulk statements for the Ledger: one round trip per table, whatever the batch size.

On PostgreSQL each statement takes the whole batch as one JSON document (`json_populate_recordset`)
or one array (`= ANY`), so its text and prepared plan are the same for any number of rows; per-row
`executemany` and long `IN (...)` lists cost the server a round of work per row and were the
bottleneck. SQLite runs in-process, so `executemany` is cheap there.

`PG_ONE_TRIP` writes a whole batch in a single statement (data-modifying CTEs share one snapshot, so its
clash count sees the tables as they were before the batch); the Ledger uses it when it already knows the
state of every key and account a batch touches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import Column, Row, Table, TextClause, any_, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Text

from downcity.store.database import Database
from downcity.store.schema import balances, holds, ledger_entries, usage_records

# SQLite caps bound parameters per statement; IN lists are cut into chunks below it.
_SQLITE_CHUNK = 500

_UPSERT_BALANCES = (
    "ON CONFLICT (user_id) DO UPDATE SET credits_microcredits = EXCLUDED.credits_microcredits, "
    "held_microcredits = EXCLUDED.held_microcredits, updated_at_ms = EXCLUDED.updated_at_ms"
)
_RETURNING_IDS = "RETURNING id, idempotency_key"
_IGNORE_CONFLICTS = "ON CONFLICT DO NOTHING"


def _pg_resolve_holds(keys: str, statuses: str, resolved: str) -> str:
    # Parallel arrays, not JSON: the planner sizes `unnest` by its arrays, so it probes the primary key per
    # row; with a JSON document it guesses 100 rows and hash-joins a sequential scan of every hold.
    return (
        "UPDATE holds SET status = v.status, resolved_at_ms = v.resolved_at_ms "
        f"FROM unnest({keys}, {statuses}, {resolved}) AS v(idempotency_key, status, resolved_at_ms) "
        "WHERE holds.idempotency_key = v.idempotency_key"
    )


_PG_UPDATE_HOLDS = text(
    _pg_resolve_holds("CAST(:keys AS TEXT[])", "CAST(:statuses AS TEXT[])", "CAST(:resolved AS BIGINT[])")
)
_SQLITE_UPDATE_HOLDS = (
    update(holds)
    .where(holds.c.idempotency_key == bindparam("h_key"))
    .values(status=bindparam("h_status"), resolved_at_ms=bindparam("h_resolved"))
)


def _column_names(table: Table) -> str:
    return ", ".join(
        column.name for column in table.columns if not (column.primary_key and column.autoincrement is True)
    )


def _pg_rows(table: Table, param: str) -> str:
    names = _column_names(table)
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{table.name}, {param})"
    )


# $1 keys assumed absent, $2 balances, $3 new holds, $4-$6 resolved holds (keys, statuses, times), $7 new
# entries, $8 usage rows.
PG_ONE_TRIP = f"""WITH clashes AS (
    SELECT (SELECT count(*) FROM holds WHERE idempotency_key = ANY($1::text[]))
         + (SELECT count(*) FROM ledger_entries WHERE idempotency_key = ANY($1::text[])) AS n
), written_balances AS ({_pg_rows(balances, "$2::json")} {_UPSERT_BALANCES}
), new_holds AS ({_pg_rows(holds, "$3::json")}
), resolved_holds AS ({_pg_resolve_holds("$4::text[]", "$5::text[]", "$6::bigint[]")}
), new_entries AS ({_pg_rows(ledger_entries, "$7::json")} {_RETURNING_IDS}
), new_usage AS ({_pg_rows(usage_records, "$8::json")} {_IGNORE_CONFLICTS}
)
SELECT n AS id, NULL::text AS idempotency_key FROM clashes
UNION ALL SELECT id, idempotency_key FROM new_entries"""


@cache
def _pg_insert_statement(table: Table, tail: str) -> TextClause:
    names = _column_names(table)
    return text(
        f"INSERT INTO {table.name} ({names}) SELECT {names} "
        f"FROM json_populate_recordset(NULL::{table.name}, CAST(:rows AS JSON)) {tail}"
    )


async def _pg_insert(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]], tail: str) -> Any:
    # One JSON document per batch: json.dumps and the server's parser beat per-element array encoding.
    return await conn.execute(_pg_insert_statement(table, tail), {"rows": json.dumps(rows)})


async def select_in(
    db: Database, conn: AsyncConnection, column: Column[Any], values: Sequence[str], *, lock: bool = False
) -> list[Row[Any]]:
    """Every row of `column`'s table whose `column` is one of `values`, row-locked on PostgreSQL if `lock`."""
    if not values:
        return []
    table = column.table
    if db.dialect == "postgresql":
        param = bindparam("values", list(values), type_=ARRAY(Text()))
        query = select(table).where(column == any_(param))
        return list(await conn.execute(query.with_for_update() if lock else query))
    rows: list[Row[Any]] = []
    for start in range(0, len(values), _SQLITE_CHUNK):
        chunk = values[start : start + _SQLITE_CHUNK]
        rows.extend(await conn.execute(select(table).where(column.in_(chunk))))
    return rows


async def insert_many(db: Database, conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert full rows; a duplicate key fails the transaction."""
    if not rows:
        return
    if db.dialect == "postgresql":
        await _pg_insert(conn, table, rows, "")
    else:
        await conn.execute(table.insert(), list(rows))


async def insert_ignoring_duplicates(
    db: Database, conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]
) -> None:
    """Insert full rows, skipping those whose key already exists."""
    if not rows:
        return
    if db.dialect == "postgresql":
        await _pg_insert(conn, table, rows, _IGNORE_CONFLICTS)
    else:
        await conn.execute(db.insert(table).on_conflict_do_nothing(), list(rows))


async def insert_entries(db: Database, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert ledger entries; their new ids by idempotency key."""
    if not rows:
        return {}
    if db.dialect == "postgresql":
        result = await _pg_insert(conn, ledger_entries, rows, _RETURNING_IDS)
    else:
        statement = ledger_entries.insert().returning(ledger_entries.c.id, ledger_entries.c.idempotency_key)
        result = await conn.execute(statement, list(rows))
    return {row.idempotency_key: row.id for row in result}


async def upsert_balances(db: Database, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """Write full `balances` rows, inserting users seen for the first time."""
    if not rows:
        return
    if db.dialect == "postgresql":
        await _pg_insert(conn, balances, rows, _UPSERT_BALANCES)
        return
    statement = db.insert(balances)
    statement = statement.on_conflict_do_update(
        index_elements=["user_id"],
        set_={
            "credits_microcredits": statement.excluded.credits_microcredits,
            "held_microcredits": statement.excluded.held_microcredits,
            "updated_at_ms": statement.excluded.updated_at_ms,
        },
    )
    await conn.execute(statement, list(rows))


def hold_columns(rows: Sequence[tuple[str, str, int | None]]) -> tuple[list[str], list[str], list[int | None]]:
    """(key, status, resolved_at_ms) rows as the three arrays the PostgreSQL hold update takes."""
    return [key for key, _, _ in rows], [status for _, status, _ in rows], [at for _, _, at in rows]


async def update_holds(db: Database, conn: AsyncConnection, rows: Sequence[tuple[str, str, int | None]]) -> None:
    """Set (status, resolved_at_ms) of existing holds from (key, status, resolved_at_ms) tuples."""
    if not rows:
        return
    if db.dialect == "postgresql":
        keys, statuses, resolved = hold_columns(rows)
        await conn.execute(_PG_UPDATE_HOLDS, {"keys": keys, "statuses": statuses, "resolved": resolved})
        return
    params = [{"h_key": key, "h_status": status, "h_resolved": at} for key, status, at in rows]
    await conn.execute(_SQLITE_UPDATE_HOLDS, params)
