"""Fuzz the in-process app at length: the suite's fuzz test, run until it has sent `--cases` requests per database.

Each round generates fresh schemathesis cases for every operation (valid ones, a hostile twin of each, invalid
ones) and sends each with the admin key and a user token, against a fake upstream that leaks the provider key
in a quarter of its errors. Findings (a 5xx, a 4xx outside the error shape, the canary key in a response) are
printed; the exit status is 1 when there are any.

    .venv/bin/python bench/fuzz.py [--cases 10000] [--database sqlite|postgresql|both] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from downcity.store import Database
from tests.unit.http.fakes import running_app
from tests.unit.http.fuzzing import Report, fuzz, requests_for

PER_ROUND = 25
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


async def _execute(admin_url: str, sql: str) -> None:
    engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def fuzz_database(url: str, data_dir: Path, cases: int) -> Report:
    """Migrate `url`, then fuzz one app over it in rounds until `cases` requests were sent."""
    db = Database(url)
    await db.migrate()
    await db.dispose()
    total = Report()
    async with running_app(url, data_dir) as app:
        schema = app.app.openapi()
        while total.cases < cases:
            report = await fuzz(app, requests_for(schema, PER_ROUND, PER_ROUND))
            total.cases += report.cases
            total.findings.extend(report.findings)
            for status, count in report.by_status.items():
                total.by_status[status] = total.by_status.get(status, 0) + count
    return total


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="requests to send per database")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--pg-url", default=os.environ.get("DOWNCITY_TEST_PG_URL", DEFAULT_PG_URL))
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            name = f"downcity_fuzz_{uuid.uuid4().hex[:8]}"
            if backend == "sqlite":
                url = f"sqlite+aiosqlite:///{Path(tmp) / 'fuzz.db'}"
            else:
                await _execute(args.pg_url, f'CREATE DATABASE "{name}"')
                url = f"{args.pg_url.rpartition('/')[0]}/{name}"
            started = time.perf_counter()
            try:
                report = await fuzz_database(url, Path(tmp) / backend, args.cases)
            finally:
                if backend == "postgresql":
                    await _execute(args.pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            seconds = time.perf_counter() - started
            statuses = dict(sorted(report.by_status.items()))
            print(f"{backend}: {report.cases} cases in {seconds:.0f} s, {len(report.findings)} findings; {statuses}")
            for finding in report.findings:
                print(f"  {finding}")
            failed = failed or bool(report.findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
