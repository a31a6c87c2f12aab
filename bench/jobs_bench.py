"""JobManager benchmark: 10,000 pending image jobs — scheduling lag and the actor's CPU while they wait.

Not a test. Run: `.venv/bin/python bench/jobs_bench.py [--jobs 10000] [--idle 10] [--spread 20]` (needs the
PostgreSQL server on 127.0.0.1:5432). On a local Ray cluster it runs the demo upstream (a subprocess), the
example federation's `provider-deepseek-images` Serve deployment and a JobManager actor over a fresh
database. It creates the jobs on the demo upstream (`[[image-never]]`, so they stay pending), stores them
due `--idle` seconds from now and spread evenly over the following `--spread` seconds, then starts the
actor, which recovers them all from the database. A few `--warmup` jobs fall due right after the start, so
that the measured polls find the Serve handle and the HTTP pools warm; they are not measured. It reports:

- recovery: seconds from the actor's creation until it has loaded every job;
- CPU while idle: the actor process's CPU share while all jobs wait, before any is due;
- scheduling lag: the demo upstream's arrival time of each job's first poll minus its due time (p50/p99/max);
- CPU while polling, and again idle after every job was polled once (each waits an hour for its next poll).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.serving import apply_throughput_mode, free_port

apply_throughput_mode()
os.environ.setdefault("DOWNCITY_MASTER_KEY", "YmVuY2gtbWFzdGVyLWtleS0zMi1ieXRlcy1sb25nISE=")

import httpx  # noqa: E402
import ray  # noqa: E402
from ray import serve  # noqa: E402
from sqlalchemy import insert, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from downcity.env import EnvStore  # noqa: E402
from downcity.secrets import MasterKey  # noqa: E402
from downcity.settings import Settings  # noqa: E402
from downcity.store import Database  # noqa: E402
from downcity.store.database import now_ms  # noqa: E402
from downcity.store.schema import async_jobs  # noqa: E402

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432"
FEDERATION = "examples.federation:federation"
APP = "downcity-jobs-bench"
PROVIDER = "deepseek-images"
HOUR_MS = 3_600_000
PROMPT = f"bench [[image-never]] [[poll-after:{HOUR_MS}]]"


async def _admin(sql: str) -> None:
    engine = create_async_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def _start_demo(port: int) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "downcity.demo", "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    if "listening" not in process.stdout.readline():
        process.kill()
        raise RuntimeError("the demo upstream did not start")
    return process


async def _upstream_jobs(base: str, count: int) -> list[str]:
    """Create `count` never-finishing jobs on the demo upstream; their ids."""
    limit = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": "Bearer k"}, timeout=30) as http:

        async def one() -> str:
            async with limit:
                response = await http.post("/images/jobs", json={"model": "deepseek-image", "prompt": PROMPT})
                return str(response.json()["id"])

        return await asyncio.gather(*(one() for _ in range(count)))


def _rows(upstream_ids: list[str], first_due_ms: int, spread_ms: int) -> list[dict[str, Any]]:
    now = now_ms()
    step = spread_ms / len(upstream_ids)
    return [
        {
            "job_id": f"job_{uuid.uuid4().hex}",
            "status": "queued",
            "input": {"prompt": PROMPT},
            "state": {"provider_job_id": upstream_id, "metadata": {}, "user_metadata": {}},
            "city_id": "bench",
            "user_id": "bench-user",
            "model_id": "deepseek-image",
            "provider_id": PROVIDER,
            "poll_after_ms": HOUR_MS,
            "attempts": 0,
            "next_poll_at_ms": first_due_ms + int(index * step),
            "created_at_ms": now,
            "updated_at_ms": now,
        }
        for index, upstream_id in enumerate(upstream_ids)
    ]


async def _first_polls(root: str, upstream_ids: list[str]) -> list[int | None]:
    limit = asyncio.Semaphore(64)
    async with httpx.AsyncClient(base_url=root, timeout=30) as http:

        async def one(upstream_id: str) -> int | None:
            async with limit:
                times = (await http.get(f"/_demo/jobs/{upstream_id}")).json()["poll_times_ms"]
            return int(times[0]) if times else None

        return await asyncio.gather(*(one(upstream_id) for upstream_id in upstream_ids))


async def _cpu_share(manager: Any, seconds: float) -> float:
    """The actor process's CPU time over `seconds` of wall time, as a share of one core."""
    before = (await manager.stats.remote())["cpu_s"]
    await asyncio.sleep(seconds)
    after = (await manager.stats.remote())["cpu_s"]
    return float(after - before) / seconds


def _percentile(values: list[int], share: float) -> int:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _deploy(settings: dict[str, Any]) -> None:
    from actors.providers import ProviderDeployment

    deployment = ProviderDeployment.options(name=f"provider-{PROVIDER}")  # type: ignore[attr-defined]
    serve.run(deployment.bind(FEDERATION, PROVIDER, settings), name=APP, route_prefix=None)


async def run(jobs: int, idle_s: float, spread_s: float, warmup: int) -> dict[str, Any]:
    """Set everything up, measure, and return the figures."""
    from actors.jobs import get_job_manager

    url = os.environ["DOWNCITY_BENCH_DATABASE_URL"]
    settings = {"database_url": url, "data_dir": tempfile.mkdtemp(prefix="jobs-bench-")}
    db = Database(url)
    await db.migrate()
    await EnvStore(db, MasterKey.load(Settings.with_env_secrets(settings))).set("DEEPSEEK_API_KEY", "k")
    await asyncio.to_thread(_deploy, settings)
    upstream = os.environ["EXAMPLE_UPSTREAM_URL"]
    upstream_ids = await _upstream_jobs(upstream, jobs)
    warm_ids = await _upstream_jobs(upstream, warmup)
    # The actor starts within ~2 s; the warmup jobs fall due after that, the measured ones after the idle time.
    first_due = now_ms() + 8_000 + int(idle_s * 1000)
    rows = _rows(upstream_ids, first_due, int(spread_s * 1000))
    async with db.begin() as conn:
        await conn.execute(insert(async_jobs), rows + _rows(warm_ids, now_ms() + 4_000, 1_000))
    await db.dispose()
    started = time.perf_counter()
    manager = get_job_manager(FEDERATION, settings, app_name=APP, name="downcity-jobs-bench")
    recovered = await manager.stats.remote()
    recovery_s = time.perf_counter() - started
    try:
        await asyncio.sleep(max(0.0, (first_due - int(idle_s * 1000) - now_ms()) / 1000))
        idle_cpu = await _cpu_share(manager, idle_s - 0.5)
        polling_cpu = await _cpu_share(manager, (first_due - now_ms()) / 1000 + spread_s + 1.0)
        waiting_cpu = await _cpu_share(manager, 5.0)
        stats = await manager.stats.remote()
    finally:
        ray.kill(manager)
    polls = await _first_polls(upstream.removesuffix("/v1"), upstream_ids)
    lags = [poll - row["next_poll_at_ms"] for poll, row in zip(polls, rows, strict=True) if poll is not None]
    return {
        "jobs": jobs,
        "warmup_jobs": warmup,
        "recovered": recovered["scheduled"],
        "recovery_s": round(recovery_s, 2),
        "polled_once": len(lags),
        "poll_rate_per_s": round(jobs / spread_s, 1),
        "lag_p50_ms": _percentile(lags, 0.50),
        "lag_p99_ms": _percentile(lags, 0.99),
        "lag_max_ms": max(lags),
        "manager_lag_p50_ms": stats["lag_p50_ms"],
        "manager_lag_p99_ms": stats["lag_p99_ms"],
        "cpu_idle_pct": round(100 * idle_cpu, 2),
        "cpu_polling_pct": round(100 * polling_cpu, 1),
        "cpu_waiting_after_pct": round(100 * waiting_cpu, 2),
    }


def main() -> None:
    """Parse arguments, run the benchmark in a fresh database and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds all jobs wait before the first is due")
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which the jobs fall due")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured jobs due right after the start")
    args = parser.parse_args()
    name = f"downcity_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    os.environ["DOWNCITY_BENCH_DATABASE_URL"] = f"{PG}/{name}"
    port = free_port()
    demo = _start_demo(port)
    os.environ["EXAMPLE_UPSTREAM_URL"] = f"http://127.0.0.1:{port}/v1"
    try:
        ray.init(address="local", include_dashboard=False, namespace="downcity", log_to_driver=False)
        figures = asyncio.run(run(args.jobs, args.idle, args.spread, args.warmup))
    finally:
        if ray.is_initialized():
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
        demo.terminate()
        demo.wait(10)
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")
    target = "met" if figures["lag_p99_ms"] < 250 else "MISSED"
    print(f"target p99 lag < 250 ms: {target}")


if __name__ == "__main__":
    main()
