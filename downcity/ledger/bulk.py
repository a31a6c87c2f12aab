"""Bulk statements for the Ledger: one round trip per table, whatever the batch size.

On PostgreSQL each statement takes the whole batch as one JSON document (`json_populate_recordset`)
or one array (`= ANY`), so its text and prepared plan are the same for any number of rows; per-row
`executemany` and long `IN (...)` lists cost the server a round of work per row and were the
bottleneck. SQLite runs in-process, so `executemany` is cheap there.

Balances are only ever moved by deltas (`_ADD_DELTAS`): a row is never overwritten with a value computed
elsewhere, so a second writer or a stale cache cannot lose or create money. A delta that lowers the available
balance applies only while the row stays at or above zero available; every write returns the rows it moved,
so the Ledger can tell a skipped or unexpected row (its cache was stale) and redo the batch.

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

# The inserted values are the deltas; an existing row gets them added. The guard skips the row when the
# deltas lower the available balance (credits below held) and the result would be below zero available.
_ADD_DELTAS = (
    "ON CONFLICT (user_id) DO UPDATE SET "
    "credits_microcredits = balances.credits_microcredits + EXCLUDED.credits_microcredits, "
    "held_microcredits = balances.held_microcredits + EXCLUDED.held_microcredits, "
    "updated_at_ms = EXCLUDED.updated_at_ms "
    "WHERE EXCLUDED.credits_microcredits >= EXCLUDED.held_microcredits "
    "OR balances.credits_microcredits + EXCLUDED.credits_microcredits "
    ">= balances.held_microcredits + EXCLUDED.held_microcredits "
    "RETURNING user_id, credits_microcredits, held_microcredits"
)
_RETURNING_IDS = "RETURNING id, idempotency_key"
_IGNORE_CONFLICTS = "ON CONFLICT DO NOTHING"


def _pg_change_holds(keys: str, statuses: str, resolved: str, expires: str, amounts: str) -> str:
    # Parallel arrays, not JSON: the planner sizes `unnest` by its arrays, so it probes the primary key per
    # row; with a JSON document it guesses 100 rows and hash-joins a sequential scan of every hold.
    return (
        "UPDATE holds SET status = v.status, resolved_at_ms = v.resolved_at_ms, expires_at_ms = v.expires_at_ms, "
        "amount_microcredits = v.amount_microcredits "
        f"FROM unnest({keys}, {statuses}, {resolved}, {expires}, {amounts}) "
        "AS v(idempotency_key, status, resolved_at_ms, expires_at_ms, amount_microcredits) "
        "WHERE holds.idempotency_key = v.idempotency_key"
    )


_PG_UPDATE_HOLDS = text(
    _pg_change_holds(
        "CAST(:keys AS TEXT[])",
        "CAST(:statuses AS TEXT[])",
        "CAST(:resolved AS BIGINT[])",
        "CAST(:expires AS BIGINT[])",
        "CAST(:amounts AS BIGINT[])",
    )
)
_SQLITE_UPDATE_HOLDS = (
    update(holds)
    .where(holds.c.idempotency_key == bindparam("h_key"))
    .values(
        status=bindparam("h_status"),
        resolved_at_ms=bindparam("h_resolved"),
        expires_at_ms=bindparam("h_expires"),
        amount_microcredits=bindparam("h_amount"),
    )
)
_PG_ADD_DELTAS = text(
    "INSERT INTO balances (user_id, credits_microcredits, held_microcredits, updated_at_ms) "
    "SELECT user_id, credits_microcredits, held_microcredits, updated_at_ms "
    f"FROM json_populate_recordset(NULL::balances, CAST(:rows AS JSON)) {_ADD_DELTAS}"
)
_SQLITE_ADD_DELTAS = text(
    "INSERT INTO balances (user_id, credits_microcredits, held_microcredits, updated_at_ms) "
    f"VALUES (:user_id, :credits_microcredits, :held_microcredits, :updated_at_ms) {_ADD_DELTAS}"
)

# (key, status, resolved_at_ms, expires_at_ms, amount): a lease's amount moves as calls spend it and top-ups grow it.
HoldChange = tuple[str, str, int | None, int | None, int]
BalanceRows = dict[str, tuple[int, int]]


def _column_names(table: Table) -> str:
    return ", ".join(
        column.name for column in table.columns if not (column.primary_key and column.autoincrement is True)
    )


def _pg_rows(table: Table, param: str) -> str:
    names = _column_names(table)
    return (
        f"INSERT INTO {table.name} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{table.name}, {param})"
    )


# $1 keys assumed absent, $2 balance deltas, $3 new holds, $4-$8 changed holds (keys, statuses, resolution and
# expiry times, amounts), $9 new entries, $10 usage rows. Each result row is (kind, key, a, b): one 'clashes' row
# with the count in a, an 'entry' row per new entry (key, id) and a 'balance' row per moved account (user, credits,
# held).
PG_ONE_TRIP = f"""WITH clashes AS (
    SELECT (SELECT count(*) FROM holds WHERE idempotency_key = ANY($1::text[]))
         + (SELECT count(*) FROM ledger_entries WHERE idempotency_key = ANY($1::text[])) AS n
), moved_balances AS ({_pg_rows(balances, "$2::json")} {_ADD_DELTAS}
), new_holds AS ({_pg_rows(holds, "$3::json")}
), changed_holds AS ({_pg_change_holds("$4::text[]", "$5::text[]", "$6::bigint[]", "$7::bigint[]", "$8::bigint[]")}
), new_entries AS ({_pg_rows(ledger_entries, "$9::json")} {_RETURNING_IDS}
), new_usage AS ({_pg_rows(usage_records, "$10::json")} {_IGNORE_CONFLICTS}
)
SELECT 'clashes' AS kind, NULL::text AS key, n AS a, NULL::bigint AS b FROM clashes
UNION ALL SELECT 'entry', idempotency_key, id, NULL FROM new_entries
UNION ALL SELECT 'balance', user_id, credits_microcredits, held_microcredits FROM moved_balances"""


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


async def add_balance_deltas(db: Database, conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> BalanceRows:
    """Add each row's deltas to its user's `balances` row (creating it); the moved rows' new (credits, held)."""
    if not rows:
        return {}
    if db.dialect == "postgresql":
        moved = list(await conn.execute(_PG_ADD_DELTAS, {"rows": json.dumps(rows)}))
    else:
        # SQLAlchemy has no executemany with RETURNING for an upsert; in-process SQLite runs these cheaply.
        moved = [row for params in rows for row in await conn.execute(_SQLITE_ADD_DELTAS, params)]
    return {row.user_id: (row.credits_microcredits, row.held_microcredits) for row in moved}


def hold_columns(
    rows: Sequence[HoldChange],
) -> tuple[list[str], list[str], list[int | None], list[int | None], list[int]]:
    """`HoldChange` rows as the five arrays the PostgreSQL hold update takes."""
    return (
        [row[0] for row in rows],
        [row[1] for row in rows],
        [row[2] for row in rows],
        [row[3] for row in rows],
        [row[4] for row in rows],
    )


async def update_holds(db: Database, conn: AsyncConnection, rows: Sequence[HoldChange]) -> None:
    """Set (status, resolved_at_ms, expires_at_ms, amount) of existing holds from `HoldChange` rows."""
    if not rows:
        return
    if db.dialect == "postgresql":
        keys, statuses, resolved, expires, amounts = hold_columns(rows)
        params = {"keys": keys, "statuses": statuses, "resolved": resolved, "expires": expires, "amounts": amounts}
        await conn.execute(_PG_UPDATE_HOLDS, params)
        return
    changes = [
        {"h_key": key, "h_status": status, "h_resolved": resolved, "h_expires": expires, "h_amount": amount}
        for key, status, resolved, expires, amount in rows
    ]
    await conn.execute(_SQLITE_UPDATE_HOLDS, changes)
