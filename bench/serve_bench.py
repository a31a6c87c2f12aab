"""Serve-path benchmark: requests/s and latency of Downcity's AI routes against a no-op Serve deployment.

Not a test. Run: `.venv/bin/python bench/serve_bench.py` (needs `wrk`: `apt-get install wrk`, and the
PostgreSQL server on 127.0.0.1:5432). Everything runs on this machine in one run, in Serve's throughput-
optimized HAProxy mode, and every figure is printed next to its ratio to the no-op Serve deployment.

Targets: the demo upstream direct, the no-op Serve floor, then `/v1/ai/text`, `/v1/ai/stream` and
`/v1/ai/chat/completions` (plain and streaming), each on three Downcity apps side by side: one admitting every
call on its own hold (`per-call`), one on credit leases (`leases`), both reaching the provider replicas over the
byte relay, and one on leases over Serve handle calls (`leases, handle hop`). Each is measured at `--connections`
and at one connection. Every figure comes with the non-2xx count of its runs and the ledger rows they wrote
(charge entries and usage rows, per request); a run with any non-2xx response is marked INVALID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from actors.serving import apply_throughput_mode, free_port

# Serve's internal ports (HAProxy stats, direct-ingress ports) from a base of this run's own, so the bench never
# meets another cluster on this machine (a `downcity up` or a test session) on Serve's defaults.
apply_throughput_mode(port_base=int(os.environ.get("BENCH_PORT_BASE", 20_000 + (os.getpid() % 20) * 600)))
os.environ.setdefault("DOWNCITY_ADMIN_KEY", "bench-admin-key")
os.environ.setdefault("DOWNCITY_MASTER_KEY", "YmVuY2gtbWFzdGVyLWtleS0zMi1ieXRlcy1sb25nISE=")

import httpx  # noqa: E402
import ray  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from ray import serve  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402
from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from actors.app import AppArgs, build  # noqa: E402
from downcity.store.schema import ledger_entries, usage_records  # noqa: E402

PG = "postgresql+asyncpg://postgres@127.0.0.1:5432"
ADMIN = {"Authorization": f"Bearer {os.environ['DOWNCITY_ADMIN_KEY']}"}

CHAT = {"model": "demo-chat", "messages": [{"role": "user", "content": "hello bench"}]}
ROUTES = (
    ("/v1/ai/text", "/v1/ai/text", {"prompt": "hello bench"}),
    ("/v1/ai/stream", "/v1/ai/stream", {"prompt": "hello bench"}),
    ("/v1/ai/chat/completions", "/v1/ai/chat/completions", CHAT),
    ("/v1/ai/chat/completions stream", "/v1/ai/chat/completions", {**CHAT, "stream": True}),
)

noop_app = FastAPI()


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(noop_app)
class Noop:
    """The baseline: a FastAPI deployment that does nothing."""

    @noop_app.post("/")
    async def root(self) -> dict[str, bool]:
        return {"ok": True}


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    p50_single_ms: float
    requests: int = 0
    failed: int = 0
    entries: int = 0
    usage: int = 0


@dataclass
class Run:
    """One wrk run: requests/s, p50 and p99 (ms), requests sent and non-2xx answers."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, body: Mapping[str, object], headers: dict[str, str], connections: int, seconds: int) -> Run:
    """POST `body` to `url` with wrk for `seconds`."""
    lua = "wrk.method = 'POST'\nwrk.body = [[" + json.dumps(body) + "]]\n"
    lua += "wrk.headers['Content-Type'] = 'application/json'\n"
    lua += "".join(f"wrk.headers['{k}'] = '{v}'\n" for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(script.name)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(errors.group(1)) if errors else 0
    failed += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return Run(rps, p50, p99, requests, failed)


@dataclass
class Target:
    name: str
    url: str
    body: Mapping[str, object]
    headers: dict[str, str]


def ledger_rows(database_url: str) -> tuple[int, int]:
    """(charge entries, usage rows) in the bench database."""

    async def count() -> tuple[int, int]:
        engine = create_async_engine(database_url)
        async with engine.connect() as conn:
            charges = select(func.count()).where(ledger_entries.c.kind == "charge")
            entries = (await conn.execute(charges)).scalar_one()
            usage = (await conn.execute(select(func.count()).select_from(usage_records))).scalar_one()
        await engine.dispose()
        return int(entries), int(usage)

    return asyncio.run(count())


def measure(target: Target, args: argparse.Namespace, database_url: str) -> Result:
    before = ledger_rows(database_url)
    warm = wrk(target.url, target.body, target.headers, args.connections, 2)
    loaded = wrk(target.url, target.body, target.headers, args.connections, args.seconds)
    single = wrk(target.url, target.body, target.headers, 1, args.seconds)
    after = ledger_rows(database_url)
    runs = (warm, loaded, single)
    return Result(
        target.name,
        loaded.rps,
        loaded.p50_ms,
        loaded.p99_ms,
        single.p50_ms,
        requests=sum(run.requests for run in runs),
        failed=sum(run.failed for run in runs),
        entries=after[0] - before[0],
        usage=after[1] - before[1],
    )


def median_result(rounds: list[Result]) -> Result:
    """Each figure's median over the rounds (a shared machine's speed drifts); counts are summed."""
    return Result(
        rounds[0].name,
        statistics.median(r.rps for r in rounds),
        statistics.median(r.p50_ms for r in rounds),
        statistics.median(r.p99_ms for r in rounds),
        statistics.median(r.p50_single_ms for r in rounds),
        requests=sum(r.requests for r in rounds),
        failed=sum(r.failed for r in rounds),
        entries=sum(r.entries for r in rounds),
        usage=sum(r.usage for r in rounds),
    )


async def pg(sql: str) -> None:
    engine = create_async_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(sql))
    await engine.dispose()


def seed(url: str) -> str:
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as admin:
        admin.post("/v1/cities/create", json={"name": "Bench", "city_id": "bench"}).raise_for_status()
        admin.post("/v1/env/set", json={"key": "DEMO_API_KEY", "value": "bench-key"}).raise_for_status()
        admin.post(
            "/v1/balance/credit",
            json={
                "city_id": "bench",
                "user_id": "bench-user",
                "amount_microcredits": 10**13,
                "idempotency_key": "bench-seed",
            },
        ).raise_for_status()
        token = admin.post("/v1/tokens/apply", json={"city_id": "bench", "user_id": "bench-user"})
        token.raise_for_status()
    time.sleep(1.5)
    return str(token.json()["user_token"])


# --- issue 16: the text path with retries configured (and no faults) against the same path without ---------


def compare_retries(args: argparse.Namespace, url: str, user: dict[str, str], database_url: str, data_dir: str) -> None:
    """Deploy the demo catalog with retries as a second app and print both text paths' req/s and their ratio.

    Both apps share the database, Ledger and upstream; the rounds interleave the two, as `main` does.
    """
    retrying = AppArgs(
        federation="downcity.demo.federation:retrying_federation", database_url=database_url, data_dir=data_dir
    )
    serve.run(build(retrying), name="downcity-retries", route_prefix="/retries")
    body = {"prompt": "hello bench"}
    targets = [
        Target("text, no retries", f"{url}/v1/ai/text", body, user),
        Target("text, Retry(attempts=3)", f"{url}/retries/v1/ai/text", body, user),
    ]
    rounds = [[measure(target, args, database_url) for target in targets] for _ in range(args.rounds)]
    plain, retried = (median_result([round_[i] for round_ in rounds]) for i in range(len(targets)))
    serve.delete("downcity-retries")
    print(f"\nretries configured, no faults ({args.connections} connections, median of {args.rounds} rounds):")
    for r in (plain, retried):
        print(f"{r.name:36} {r.rps:9.0f} req/s  p50 {r.p50_ms:.2f} ms  p99 {r.p99_ms:.2f} ms  non-2xx {r.failed}")
    print(f"text path with retries vs without: {retried.rps / plain.rps:.1%} of the req/s (target >= 97%)")


# --- quotas on and off (issue #15): the text path of a user bound by a quota, against one bound by none --------

QUOTA_TEXT = "quotas on /v1/ai/text"


def quota_target(url: str) -> Target:
    """A user whose token's plan a stored quota binds (limits too high to refuse): every call admits through it."""
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as admin:
        admin.post(
            "/v1/quotas/set",
            json={
                "city_id": "bench",
                "id": "bench-quota",
                "metadata": {"plan": "bench"},
                "requests_per_minute": 10**9,
                "tokens_per_minute": 10**12,
            },
        ).raise_for_status()
        admin.post(
            "/v1/balance/credit",
            json={
                "city_id": "bench",
                "user_id": "bench-quota-user",
                "amount_microcredits": 10**13,
                "idempotency_key": "bench-quota-seed",
            },
        ).raise_for_status()
        token = admin.post(
            "/v1/tokens/apply", json={"city_id": "bench", "user_id": "bench-quota-user", "metadata": {"plan": "bench"}}
        )
        token.raise_for_status()
    time.sleep(1.5)  # every ingress replica reloads stored quotas within a second
    user = {"Authorization": f"Bearer {token.json()['user_token']}"}
    return Target(QUOTA_TEXT, f"{url}/v1/ai/text", {"prompt": "hello bench"}, user)


def report_quotas(results: list[Result]) -> None:
    """The text path with quotas on, as a ratio to the same path with quotas off, measured in the same run."""
    by_name = {r.name: r for r in results}
    on, off = by_name[QUOTA_TEXT], by_name["per-call /v1/ai/text"]
    print(
        f"quotas on vs off, text path req/s: {on.rps / off.rps:.0%} (target >= 90%); "
        f"p50@1conn +{on.p50_single_ms - off.p50_single_ms:.2f} ms"
    )


@dataclass
class Bench:
    """The running bench: the Serve URL, the demo upstream's port, the bench user's headers and the database."""

    url: str
    demo_port: int
    user: dict[str, str]
    database_url: str
    data_dir: str


# The Downcity apps side by side: (app name, route prefix, credit leases, provider hop).
APPS: tuple[tuple[str, str, bool, Literal["relay", "handle"]], ...] = (
    ("downcity", "/", False, "relay"),
    ("downcity-leases", "/leases", True, "relay"),
    ("downcity-handle", "/handle", True, "handle"),
)
MODES = (("per-call", ""), ("leases", "/leases"), ("leases, handle hop", "/handle"))


@contextlib.contextmanager
def running() -> Iterator[Bench]:
    """The demo upstream, a fresh PostgreSQL database and a local Ray cluster serving the no-op deployment and
    the Downcity apps of `APPS`, with a seeded user; all torn down on exit."""
    demo_port, http_port = free_port(), free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "downcity.demo", "--port", str(demo_port)], stdout=subprocess.PIPE, text=True
    )
    assert demo.stdout is not None and "listening" in demo.stdout.readline()
    os.environ["DOWNCITY_DEMO_UPSTREAM_URL"] = f"http://127.0.0.1:{demo_port}/v1"
    database = f"downcity_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(pg(f'CREATE DATABASE "{database}"'))
    data_dir = tempfile.mkdtemp()
    try:
        ray.init(address="local", include_dashboard=False, namespace="downcity", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(Noop.bind(), name="noop", route_prefix="/noop")
        database_url = f"{PG}/{database}"
        for name, prefix, leases, hop in APPS:
            app_args = AppArgs(
                federation="downcity.demo.federation:federation",
                database_url=database_url,
                data_dir=data_dir,
                leases=leases,
                provider_hop=hop,
            )
            serve.run(build(app_args), name=name, route_prefix=prefix)
        url = f"http://127.0.0.1:{http_port}"
        yield Bench(url, demo_port, {"Authorization": f"Bearer {seed(url)}"}, database_url, data_dir)
    finally:
        serve.shutdown()
        ray.shutdown()
        demo.terminate()
        asyncio.run(pg(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="every target is measured once per round")
    parser.add_argument("--retries", action="store_true", help="also compare the text path with retries configured")
    parser.add_argument("--only", default="", help="measure only targets whose name contains this")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    with running() as bench:
        targets = [
            Target(
                "demo upstream direct",
                f"http://127.0.0.1:{bench.demo_port}/v1/chat/completions",
                CHAT,
                {"Authorization": "Bearer bench-key"},
            ),
            Target("no-op Serve deployment", f"{bench.url}/noop/", {}, {}),
            *(
                Target(f"{mode} {name}", f"{bench.url}{prefix}{path}", body, bench.user)
                for mode, prefix in MODES
                for name, path, body in ROUTES
            ),
            quota_target(bench.url),
        ]
        measured = [t for t in targets if args.only in t.name or t.name in (targets[0].name, targets[1].name)]
        # Rounds interleave the targets, so a drift in the machine's speed hits every target alike.
        rounds = [[measure(target, args, bench.database_url) for target in measured] for _ in range(args.rounds)]
        results = [median_result([round_[i] for round_ in rounds]) for i in range(len(measured))]
        if args.retries:
            compare_retries(args, bench.url, bench.user, bench.database_url, bench.data_dir)
    report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> None:
    """Print every figure with its ratio to the floor, its non-2xx count and the ledger rows per request."""
    upstream, noop = results[0], results[1]
    print(
        f"\n{args.connections} connections (and 1), {args.seconds}s each, median of {args.rounds} rounds; "
        f"ratios are to the no-op Serve deployment; load average before the report: {os.getloadavg()}"
    )
    header = f"{'target':42} {'req/s':>7} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} {'p50@1':>7}"
    print(f"{header} {'requests':>9} {'non-2xx':>8} {'entries/req':>11} {'usage/req':>9}")
    for r in results:
        per_request = max(r.requests, 1)
        print(
            f"{r.name:42} {r.rps:7.0f} {r.rps / noop.rps:6.2f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.p50_single_ms:7.2f}"
            f" {r.requests:9d} {r.failed:8d} {r.entries / per_request:11.3f} {r.usage / per_request:9.3f}"
        )
    failed = sum(r.failed for r in results)
    if failed:
        print(f"\nINVALID RUN: {failed} non-2xx or failed responses; no figure above can be trusted")
    for r in results[2:]:
        if r.name.endswith(("/v1/ai/text", "/v1/ai/chat/completions")):
            print(
                f"{r.name}: {r.rps / noop.rps:.0%} of the floor (target >= 40%), added p50 at 1 connection "
                f"{r.p50_single_ms - upstream.p50_single_ms:.2f} ms over the upstream direct (target <= 3 ms)"
            )
        else:
            print(f"{r.name}: {r.rps / noop.rps:.0%} of the floor (streaming target >= 30%)")
    report_quotas(results)


if __name__ == "__main__":
    main()
