"""Money invariants under faults, on the real local Ray cluster, over HTTP, against PostgreSQL.

A second copy of the example Federation is deployed beside the session's app with two ingress replicas. One user,
whose balance covers one image job's hold and about sixty 500-microcredit calls, then sends:

- 4 concurrent image creates (exactly one fits the balance; its job stays pending, holding 160,000, until the end);
- 50 concurrent calls with one Idempotency-Key and one body (one upstream call; every other answer a replay);
- 200 concurrent billed calls (`deepseek-flat` text, UI stream, chat/completions plain and streaming, plus image
  creates), while the Ledger actor is killed twice and one ingress replica is killed once, each kill taken only
  while billed work is in flight (counted from the client side, and for the replica from the replica itself).

Then the ledger, holds, usage rows, idempotency claims and the demo upstream's request log are read back and the
money invariants of DESIGN.md §4 are checked: no overdraft, credits == credited - charges, one charge entry per
charged usage row and per request, one usage row per request, every answer paid for exactly once, refusals and
failures never charged, and calls lost with the killed replica left settled or held (for the sweep), never twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from sqlalchemy import select

from actors.jobs import JOB_MANAGER_NAME
from actors.ledger import LEDGER_ACTOR_NAME, get_ledger
from downcity.calls.replays import key_hash
from downcity.store import Database
from downcity.store.database import now_ms
from downcity.store.schema import (
    async_jobs,
    balances,
    holds,
    idempotency_claims,
    ledger_entries,
    settle_outbox,
    usage_records,
)
from tests.conftest import TEST_ADMIN_KEY
from tests.integration.conftest import ServedApp, deploy_beside, wait_for_ingress_replicas

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

FEDERATION = "examples.federation:federation"
CHAOS_APP = "downcity-chaos"
CHAOS_PREFIX = "/chaos"
INGRESS_REPLICAS = 2
REPLICA_PREFIX = f"SERVE_REPLICA::{CHAOS_APP}#ingress#"

FLAT_PRICE = 500
IMAGE_PRICE = 20_000
# Each create asks for the most images, so its hold (price x count) is the largest a create can take.
IMAGE_COUNT = 8
IMAGE_HOLD = IMAGE_COUNT * IMAGE_PRICE
REPLAY_HOLD = 2_000
# The balance: one image job's hold, the replayed call's hold, and sixty flat calls.
FLAT_CALLS_COVERED = 60
CREDIT = IMAGE_HOLD + REPLAY_HOLD + FLAT_CALLS_COVERED * FLAT_PRICE

PHASE0_IMAGES = 4
REPLAYS = 50
STORM_KINDS = ("text", "chat", "stream", "chat_stream")
STORM_FLAT_PER_KIND = 45
STORM_IMAGES = 20
STORM_CALLS = STORM_FLAT_PER_KIND * len(STORM_KINDS) + STORM_IMAGES
# The provider's upstream timeout in this session is 2 s (tests/conftest.py): a non-streamed call sleeps well
# under it; a stream writes an event every GAP_MS, so an admitted stream stays open for ~25 s.
SLEEP_MS = 600
GAP_MS = 400
STREAM_WORDS = 60
# A pending image job is polled every second and would be done after this many polls (minutes): its hold lasts
# through the storm, and afterwards the test polls the demo upstream itself until the job is done.
IMAGE_POLLS = 200
IMAGE_POLL_AFTER_MS = 1_000
# Kills wait for this many admitted streams to be open (their holds reserved, their upstream streaming).
MIN_OPEN_STREAMS = 8
MIN_VICTIM_ONGOING = 3

SETUP_DEADLINE_S = 60
STORM_DEADLINE_S = 120
RESTART_DEADLINE_S = 60
SETTLE_DEADLINE_S = 120

PATHS = {
    "text": ("/v1/ai/text", "text"),
    "stream": ("/v1/ai/stream", "stream"),
    "chat": ("/v1/ai/chat/completions", "openai"),
    "chat_stream": ("/v1/ai/chat/completions", "openai"),
    "image": ("/v1/ai/image/create", "image"),
}
STREAMING = frozenset({"stream", "chat_stream"})
UI_DONE = b"data: [DONE]\n\n"


# --- the second app, with two ingress replicas -------------------------------------------------------------


@pytest.fixture(scope="module")
def chaos_url(served: ServedApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The session app's database: both apps share its Ledger actor, JobManager actor and provider key.
    data_dir = str(tmp_path_factory.mktemp("chaos"))
    deploy_beside(FEDERATION, CHAOS_APP, CHAOS_PREFIX, served.database_url, data_dir, ingress_replicas=INGRESS_REPLICAS)
    yield served.url + CHAOS_PREFIX
    serve.delete(CHAOS_APP)


# --- client-side tracking ------------------------------------------------------------------------------------


class Tracker:
    """Counts of the storm's requests, and waiters woken the moment a condition on them holds."""

    def __init__(self) -> None:
        self.started = 0
        self.finished = 0
        self.open_streams = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def bump(self, *, started: int = 0, finished: int = 0, open_streams: int = 0) -> None:
        self.started += started
        self.finished += finished
        self.open_streams += open_streams
        for predicate, future in list(self._waiters):
            if not future.done() and predicate():
                future.set_result(None)
        self._waiters = [(p, f) for p, f in self._waiters if not f.done()]

    async def until(self, predicate: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((predicate, future))
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            raise AssertionError(f"never {what}: {self.snapshot()}") from None

    def snapshot(self) -> dict[str, int]:
        return {"started": self.started, "finished": self.finished, "open_streams": self.open_streams}


@dataclass
class Outcome:
    """What the client saw of one request."""

    kind: str
    client_key: str
    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    transport_error: str | None = None

    @property
    def pathway(self) -> str:
        return PATHS[self.kind][1]

    @property
    def error_type(self) -> str | None:
        if self.status in (None, 200):
            return None
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return None
        return str(parsed["error"]["type"]) if isinstance(parsed, dict) and "error" in parsed else None

    @property
    def died(self) -> bool:
        """Lost with the killed replica: a broken connection, or HAProxy's normalized 500 (Downcity never 500s)."""
        if self.transport_error is not None:
            return True
        # HAProxy's own error page; an unhandled error in the app would say `text/plain; charset=utf-8`.
        return self.status == 500 and self.headers.get("content-type") == "text/plain"

    @property
    def answered(self) -> bool:
        """A complete answer: a 200 body, or a stream that reached its final frame after the settle."""
        if self.status != 200 or self.transport_error is not None:
            return False
        if self.kind == "stream":
            return self.body.endswith(UI_DONE) and b'"type":"finish"' in self.body
        if self.kind == "chat_stream":
            return self.body.endswith(UI_DONE) and b'"error"' not in self.body
        return True

    @property
    def ended_early(self) -> bool:
        """A stream that got its 200 and ended with an error frame (billed for what was delivered, or released)."""
        return self.status == 200 and self.transport_error is None and not self.answered


def storm_body(kind: str, tag: str) -> dict[str, Any]:
    if kind == "image":
        return {
            "model": "deepseek-image",
            "count": IMAGE_COUNT,
            "prompt": f"chaos {tag} [[polls:{IMAGE_POLLS}]] [[poll-after:{IMAGE_POLL_AFTER_MS}]]",
        }
    if kind == "stream":
        words = " ".join(f"w{i}" for i in range(STREAM_WORDS))
        return {"model": "deepseek-flat", "prompt": f"chaos {tag} [[slow-stream:{GAP_MS}]] {words}"}
    if kind == "text":
        return {"model": "deepseek-flat", "prompt": f"chaos {tag} [[sleep:{SLEEP_MS}]]"}
    if kind == "chat":
        messages = [{"role": "user", "content": f"chaos {tag} [[sleep:{SLEEP_MS}]]"}]
        return {"model": "deepseek-flat", "messages": messages}
    words = " ".join(f"w{i}" for i in range(STREAM_WORDS))
    messages = [{"role": "user", "content": f"chaos {tag} [[slow-stream:{GAP_MS}]] {words}"}]
    return {"model": "deepseek-flat", "messages": messages, "stream": True}


async def send(client: httpx.AsyncClient, kind: str, tracker: Tracker | None = None) -> Outcome:
    """One storm request with its own Idempotency-Key; transport errors are outcomes, not exceptions."""
    outcome = Outcome(kind, f"chaos-{kind}-{uuid.uuid4().hex}")
    path = PATHS[kind][0]
    body = storm_body(kind, outcome.client_key[-8:])
    headers = {"Idempotency-Key": outcome.client_key}
    if tracker is not None:
        tracker.bump(started=1)
    try:
        if kind in STREAMING:
            async with client.stream("POST", path, json=body, headers=headers) as response:
                outcome.status, outcome.headers = response.status_code, dict(response.headers)
                streaming = response.status_code == 200
                if streaming and tracker is not None:
                    tracker.bump(open_streams=1)
                chunks: list[bytes] = []
                try:
                    async for chunk in response.aiter_bytes():
                        chunks.append(chunk)
                finally:
                    outcome.body = b"".join(chunks)
                    if streaming and tracker is not None:
                        tracker.bump(open_streams=-1)
        else:
            response = await client.post(path, json=body, headers=headers)
            outcome.status, outcome.headers, outcome.body = (
                response.status_code,
                dict(response.headers),
                response.content,
            )
    except httpx.TransportError as lost:
        outcome.transport_error = f"{type(lost).__name__}: {lost}"
    finally:
        if tracker is not None:
            tracker.bump(finished=1)
    return outcome


# --- faults ----------------------------------------------------------------------------------------------------


def actor_info(handle: Any) -> dict[str, Any]:
    info: dict[str, Any] = ray._private.state.actors(handle._actor_id.hex())
    return info


@dataclass
class Kill:
    """One injected fault and the work in flight when it hit."""

    target: str
    at: dict[str, int]
    detail: dict[str, Any] = field(default_factory=dict)


async def kill_ledger(tracker: Tracker, database_url: str) -> Kill:
    """Kill the Ledger actor (Ray restarts it) and wait until the new process answers."""
    handle = ray.get_actor(LEDGER_ACTOR_NAME, namespace="downcity")
    before = actor_info(handle)
    kill = Kill("ledger", tracker.snapshot(), {"pid_before": before["Pid"], "restarts_before": before["NumRestarts"]})
    ray.kill(handle, no_restart=False)
    killed_at = time.monotonic()
    async with asyncio.timeout(RESTART_DEADLINE_S):
        # ray.kill only asks: a call sent now may still reach the old process. Wait for Ray's restart first.
        while True:
            info = actor_info(handle)
            if info["NumRestarts"] > before["NumRestarts"] and info["State"] == "ALIVE":
                break
            await asyncio.sleep(0.05)
        while True:
            try:
                served_url = await handle.ping.remote()
                break
            except (RayActorError, ActorUnavailableError):
                await asyncio.sleep(0.05)
    after = actor_info(handle)
    kill.detail.update(
        pid_after=after["Pid"],
        restarts_after=after["NumRestarts"],
        restart_s=round(time.monotonic() - killed_at, 2),
        database=served_url == database_url,
        after=tracker.snapshot(),
    )
    return kill


def ingress_replica_handles() -> dict[str, Any]:
    names = [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == "serve" and actor["name"].startswith(REPLICA_PREFIX)
    ]
    return {name: ray.get_actor(name, namespace="serve") for name in names}


async def kill_busiest_ingress_replica(tracker: Tracker) -> Kill:
    """Kill the ingress replica with the most ongoing requests, once it has at least MIN_VICTIM_ONGOING."""
    async with asyncio.timeout(RESTART_DEADLINE_S):
        while True:
            replicas = ingress_replica_handles()
            assert len(replicas) == INGRESS_REPLICAS, sorted(replicas)
            ongoing = {name: await handle.get_num_ongoing_requests.remote() for name, handle in replicas.items()}
            victim = max(ongoing, key=lambda name: ongoing[name])
            if ongoing[victim] >= MIN_VICTIM_ONGOING:
                break
            await asyncio.sleep(0.05)
    kill = Kill("ingress", tracker.snapshot(), {"victim": victim, "ongoing": ongoing})
    ray.kill(replicas[victim], no_restart=True)
    return kill


# --- reading back -----------------------------------------------------------------------------------------------


async def fetch_rows(db: Database, table: Any, *conditions: Any) -> list[Any]:
    async with db.connect() as conn:
        return list((await conn.execute(select(table).where(*conditions))).all())


async def upstream_log(demo_upstream: str, since_ms: int) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=30) as http:
        items: list[dict[str, Any]] = (await http.get(f"{demo_upstream.removesuffix('/v1')}/_demo/requests")).json()[
            "items"
        ]
    return [item for item in items if item["time_ms"] >= since_ms]


def holds_of(rows: list[Any]) -> list[str]:
    return [row.status for row in rows]


async def finish_upstream_job(db: Database, demo_upstream: str, job_id: str) -> None:
    """Poll the demo upstream's job of `job_id` until it answers `succeeded` (the JobManager's next poll sees it)."""
    (job,) = await fetch_rows(db, async_jobs, async_jobs.c.job_id == job_id)
    assert job.status in ("queued", "running"), job
    url = f"{demo_upstream}/images/jobs/{job.state['provider_job_id']}"
    async with httpx.AsyncClient(headers={"Authorization": "Bearer k"}, timeout=30) as http:
        for _ in range(IMAGE_POLLS + 1):
            if (await http.get(url)).json()["status"] == "succeeded":
                return
    raise AssertionError(f"the upstream job of {job_id} never succeeded")


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float) -> None:
    """Poll an async condition (a database state no event announces) until it holds."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"never {what} within {timeout_s} s") from None


@dataclass
class Samples:
    """Balances seen during the run, through the admin route and straight from the database."""

    http: list[dict[str, Any]] = field(default_factory=list)
    db: list[tuple[int, int]] = field(default_factory=list)
    failed: int = 0


async def sample_balance(
    admin: httpx.AsyncClient, db: Database, city_id: str, user_id: str, stop: asyncio.Event
) -> Samples:
    samples = Samples()
    account = f"{city_id}/{user_id}"
    while not stop.is_set():
        try:
            seen = await admin.get("/v1/balance/get", params={"city_id": city_id, "user_id": user_id})
            if seen.status_code == 200:
                samples.http.append(seen.json())
            else:
                samples.failed += 1
        except httpx.TransportError:
            samples.failed += 1
        for row in await fetch_rows(db, balances, balances.c.user_id == account):
            samples.db.append((row.credits_microcredits, row.held_microcredits))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)
    return samples


# --- the test ------------------------------------------------------------------------------------------------


@dataclass
class Replays:
    """The 50 calls sharing one Idempotency-Key: each one's first answer and its final one."""

    key: str
    body: dict[str, Any]
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # Replays refused while the owner ran try again once the faults start, so they run through them.
    retry_gate: asyncio.Event = field(default_factory=asyncio.Event)
    first: list[Outcome] = field(default_factory=list)
    final: list[Outcome] = field(default_factory=list)
    lost: int = 0

    async def one(self, client: httpx.AsyncClient) -> None:
        """Call until a final answer: a 409 in flight waits for the owner's answer, a lost call is sent again."""
        headers = {"Idempotency-Key": self.key}
        for attempt in itertools.count():
            assert attempt < 20, "a replay kept failing"
            outcome = Outcome("text", self.key)
            try:
                response = await client.post("/v1/ai/text", json=self.body, headers=headers)
                outcome.status, outcome.headers, outcome.body = (
                    response.status_code,
                    dict(response.headers),
                    response.content,
                )
            except httpx.TransportError as lost:
                outcome.transport_error = f"{type(lost).__name__}: {lost}"
            if attempt == 0:
                self.first.append(outcome)
            if outcome.died:
                self.lost += 1
                continue
            if outcome.error_type == "idempotency_in_flight":
                await self.settled.wait()
                await self.retry_gate.wait()
                continue
            self.settled.set()
            self.final.append(outcome)
            return


async def test_money_invariants_hold_while_the_ledger_and_an_ingress_replica_are_killed(
    served: ServedApp, chaos_url: str, demo_upstream: str
) -> None:
    city_id, user_id, token = await served.new_user(credit=CREDIT)
    account = f"{city_id}/{user_id}"
    db = Database(served.database_url, pool_size=4)
    limits = httpx.Limits(max_connections=STORM_CALLS + REPLAYS + 20, max_keepalive_connections=50)
    client = httpx.AsyncClient(
        base_url=chaos_url, headers={"Authorization": f"Bearer {token}"}, timeout=90, limits=limits
    )
    admin = httpx.AsyncClient(base_url=chaos_url, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}, timeout=30)
    started_ms = now_ms()
    started = time.monotonic()
    try:
        # Phase 0: four concurrent image creates; the balance holds exactly one job, which stays pending.
        async with asyncio.timeout(SETUP_DEADLINE_S):
            images = await asyncio.gather(*(send(client, "image") for _ in range(PHASE0_IMAGES)))
        assert sorted(o.status or 0 for o in images) == [200, 402, 402, 402], [(o.status, o.body) for o in images]
        assert all(o.error_type == "insufficient_balance" for o in images if o.status == 402)
        job_id = next(json.loads(o.body)["job_id"] for o in images if o.status == 200)

        # The replays start first, and the storm only once their owner's hold is reserved.
        replays = Replays(
            f"chaos-replay-{uuid.uuid4().hex}", {"model": "deepseek-chat", "prompt": "replay [[sleep:200]]"}
        )
        replay_hash = key_hash(city_id, user_id, "text", replays.key)
        replay_tasks = [asyncio.create_task(replays.one(client)) for _ in range(REPLAYS)]

        async def owner_held() -> bool:
            claims = await fetch_rows(db, idempotency_claims, idempotency_claims.c.key_hash == replay_hash)
            return bool(claims) and bool(
                await fetch_rows(db, holds, holds.c.idempotency_key == f"call:{claims[0].owner}")
            )

        await wait_until(owner_held, "reserved the replayed call's hold", SETUP_DEADLINE_S)

        # The storm, the faults and the balance sampler, all at once.
        tracker = Tracker()
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_balance(admin, db, city_id, user_id, stop_sampling))
        kinds = [*itertools.chain.from_iterable(itertools.repeat(STORM_KINDS, STORM_FLAT_PER_KIND))]
        for index in range(STORM_IMAGES):
            kinds.insert(index * len(kinds) // STORM_IMAGES, "image")

        async def faults() -> list[Kill]:
            kills: list[Kill] = []
            for _ in range(2):
                await tracker.until(lambda: tracker.open_streams >= MIN_OPEN_STREAMS, "opened enough streams")
                replays.retry_gate.set()
                kills.append(await kill_ledger(tracker, served.database_url))
            await replays.settled.wait()
            await tracker.until(lambda: tracker.open_streams >= MIN_OPEN_STREAMS, "kept enough streams open")
            kills.append(await kill_busiest_ingress_replica(tracker))
            return kills

        storm_task = asyncio.gather(*(send(client, kind, tracker) for kind in kinds))
        try:
            async with asyncio.timeout(STORM_DEADLINE_S):
                kills = await faults()
                storm = await storm_task
                await asyncio.gather(*replay_tasks)
        except BaseException:
            storm_task.cancel()
            for task in replay_tasks:
                task.cancel()
            raise
        storm_s = time.monotonic() - started
        stop_sampling.set()
        samples = await sampler
        by_kind = Counter(
            (o.kind, "answered" if o.answered else o.error_type or ("died" if o.died else "early")) for o in storm
        )
        report = {
            "storm_s": round(storm_s, 1),
            "kills": [(k.target, k.at, k.detail) for k in kills],
            "outcomes": sorted(by_kind.items()),
            "replays_lost": replays.lost,
            "samples": (len(samples.http), len(samples.db), samples.failed),
        }
        print("money chaos:", json.dumps(report, default=str))

        # The pending image job, still holding its share: finish it upstream; the JobManager bills it from the hold.
        assert holds_of(await fetch_rows(db, holds, holds.c.idempotency_key == f"image:{job_id}")) == ["held"]
        async with asyncio.timeout(SETTLE_DEADLINE_S):
            await finish_upstream_job(db, demo_upstream, job_id)
            manager = ray.get_actor(JOB_MANAGER_NAME, namespace="downcity")
            billed = await manager.wait.remote(job_id, SETTLE_DEADLINE_S / 2)
        assert billed["status"] == "succeeded", billed

        # Settles the Ledger could not take are owed from the outbox until it drains them.
        async def outbox_drained() -> bool:
            return not await fetch_rows(db, settle_outbox, settle_outbox.c.user_id == account)

        await wait_until(outbox_drained, "drained the settle outbox", SETTLE_DEADLINE_S)
        await asyncio.to_thread(wait_for_ingress_replicas, CHAOS_APP, INGRESS_REPLICAS, SETTLE_DEADLINE_S)

        entries = await fetch_rows(db, ledger_entries, ledger_entries.c.user_id == account)
        usage = await fetch_rows(db, usage_records, usage_records.c.user_id == user_id)
        held_rows = await fetch_rows(db, holds, holds.c.user_id == account)
        claims = await fetch_rows(db, idempotency_claims, idempotency_claims.c.user_id == user_id)
        (balance_row,) = await fetch_rows(db, balances, balances.c.user_id == account)
        upstream = await upstream_log(demo_upstream, started_ms)

        # Time passes for the holds the lost calls left behind: the Ledger's sweep releases them, charging nothing.
        stuck = [h for h in held_rows if h.status == "held"]
        sweep_at = max((h.expires_at_ms for h in stuck), default=now_ms()) + 1
        swept = await get_ledger(served.database_url).sweep_expired_holds(now_ms=sweep_at)
        (swept_balance,) = await fetch_rows(db, balances, balances.c.user_id == account)
        swept_holds = {h.idempotency_key: h.status for h in await fetch_rows(db, holds, holds.c.user_id == account)}
        swept_entries = await fetch_rows(db, ledger_entries, ledger_entries.c.user_id == account)
    finally:
        await client.aclose()
        await admin.aclose()
        await db.dispose()

    holds_by_key = {h.idempotency_key: h for h in held_rows}
    claims_by_key = {c.key_hash: c for c in claims}
    # Lost streams that had shown content before the replica died: their holds lapse, so that content goes unbilled.
    unbilled = [
        o
        for o in storm
        if o.died
        and o.kind in STREAMING
        and b"w0" in o.body
        and (claim := claims_by_key.get(key_hash(city_id, user_id, o.pathway, o.client_key))) is not None
        and getattr(holds_by_key.get(f"call:{claim.owner}"), "status", None) == "held"
    ]
    final = (balance_row.credits_microcredits, balance_row.held_microcredits, len(stuck), swept, len(unbilled))
    print("money chaos final (credits, held, stuck holds, swept, delivered-unbilled streams):", final)

    # Each kill hit work in flight: billed streams open, requests started and not all finished.
    ledger_kills, ingress_kills = (
        [k for k in kills if k.target == "ledger"],
        [k for k in kills if k.target == "ingress"],
    )
    assert len(ledger_kills) == 2 and len(ingress_kills) == 1
    for kill in kills:
        assert kill.at["open_streams"] >= MIN_OPEN_STREAMS, kill
        assert kill.at["started"] == STORM_CALLS and kill.at["finished"] < STORM_CALLS, kill
    for kill in ledger_kills:
        # A new process each time, restarted by Ray, on the same database.
        assert kill.detail["pid_after"] != kill.detail["pid_before"], kill
        assert kill.detail["restarts_after"] == kill.detail["restarts_before"] + 1, kill
        assert kill.detail["database"], kill
    assert ingress_kills[0].detail["ongoing"][ingress_kills[0].detail["victim"]] >= MIN_VICTIM_ONGOING
    died = [o for o in storm if o.died]
    assert died, "the killed ingress replica took no request with it"

    # The balance never went below zero, nor below what it held: sampled live and in every entry written.
    assert samples.http and samples.db
    assert all(s["balance"] >= 0 and s["available"] >= 0 and s["held"] >= 0 for s in samples.http), samples.http
    assert all(credits >= 0 and 0 <= held <= credits for credits, held in samples.db), samples.db
    assert all(entry.balance_after_microcredits >= 0 for entry in entries)

    # Conservation: credits == credited - charges; held == the holds still held.
    assert Counter(e.kind for e in entries)["credit"] == 1
    assert {e.kind for e in entries} <= {"credit", "charge"}
    charges = [e for e in entries if e.kind == "charge"]
    credited = sum(e.amount_microcredits for e in entries if e.kind == "credit")
    assert credited == CREDIT
    assert balance_row.credits_microcredits == credited - sum(e.amount_microcredits for e in charges)
    still_held = [h for h in held_rows if h.status == "held"]
    assert balance_row.held_microcredits == sum(h.amount_microcredits for h in still_held)
    assert balance_row.credits_microcredits - balance_row.held_microcredits >= 0

    # One charge entry per charged usage row and per request; one usage row per request.
    charge_keys = Counter(e.idempotency_key for e in charges)
    assert all(count == 1 for count in charge_keys.values())
    assert len({key.split(":", 1)[1] for key in charge_keys}) == len(charge_keys), "two entries for one request"
    assert all(key.startswith(("call:", "image:")) for key in charge_keys)
    usage_ids = Counter(u.request_id for u in usage)
    assert all(count == 1 for count in usage_ids.values())
    charged_usage = [u for u in usage if u.charge_microcredits > 0]
    entry_amounts = {e.idempotency_key: e.amount_microcredits for e in charges}
    assert sorted(u.ledger_entry_key for u in charged_usage) == sorted(entry_amounts)
    for row in charged_usage:
        prefix = "image:" if row.pathway == "image" else "call:"
        assert row.ledger_entry_key == f"{prefix}{row.request_id}", row
        assert entry_amounts[row.ledger_entry_key] == row.charge_microcredits, row
    assert all(u.ledger_entry_key is None for u in usage if u.charge_microcredits == 0)
    # No client key reached the upstream twice: at most one usage row per key.
    assert all(count == 1 for count in Counter(u.idempotency_key for u in usage if u.idempotency_key).values())

    usage_by_key = {u.idempotency_key: u for u in usage if u.idempotency_key}

    # The image job: four creates, one admitted, billed once from its hold; the storm's creates all refused.
    assert usage_by_key[f"image:{job_id}"].status == "ok"
    assert entry_amounts[f"image:{job_id}"] == IMAGE_HOLD
    assert holds_by_key[f"image:{job_id}"].status == "settled"
    assert [h.idempotency_key for h in held_rows if h.idempotency_key.startswith("image:")] == [f"image:{job_id}"]
    storm_images = [o for o in storm if o.kind == "image"]
    assert all(o.error_type == "insufficient_balance" or o.died for o in storm_images), storm_images
    assert [i["path"] for i in upstream if i["path"] == "/v1/images/jobs"] == ["/v1/images/jobs"]

    # The 50 replays: one upstream call, one usage row and one charge; every answer the same stored message.
    assert len(replays.final) == REPLAYS
    assert all(o.status == 200 for o in replays.final), [(o.status, o.body) for o in replays.final]
    owners = [o for o in replays.final if o.headers.get("idempotent-replayed") != "true"]
    assert len(owners) == 1, "more than one replay ran the call"
    assert len({json.dumps(json.loads(o.body), sort_keys=True) for o in replays.final}) == 1
    assert all(o.status == 200 or o.error_type == "idempotency_in_flight" or o.died for o in replays.first), [
        (o.status, o.body) for o in replays.first
    ]
    replay_usage = usage_by_key[replay_hash]
    assert replay_usage.status == "ok" and 0 < replay_usage.charge_microcredits <= REPLAY_HOLD
    assert claims_by_key[replay_hash].state == "done" and claims_by_key[replay_hash].owner == replay_usage.request_id
    assert len([i for i in upstream if i["model"] == "deepseek-chat"]) == 1

    # Every answer was paid for exactly once, with its own usage row; refusals and failures were never charged.
    flats = [o for o in storm if o.kind != "image"]
    for outcome in flats:
        hashed = key_hash(city_id, user_id, outcome.pathway, outcome.client_key)
        row = usage_by_key.get(hashed)
        claim = claims_by_key.get(hashed)
        if outcome.answered:
            assert row is not None and row.status == "ok", (outcome, row)
            assert row.charge_microcredits == FLAT_PRICE and row.ledger_entry_key == f"call:{row.request_id}"
            assert claim is not None and claim.state == "done" and claim.owner == row.request_id
            assert holds_by_key[f"call:{row.request_id}"].status == "settled"
        elif outcome.died:
            # Lost with the replica: its hold is settled (paid, answer lost) or still held (for the sweep).
            if claim is None:
                assert row is None
                continue
            hold = holds_by_key.get(f"call:{claim.owner}")
            assert hold is None or hold.status in ("held", "settled", "released"), hold
            if hold is not None and hold.status == "held":
                assert f"call:{claim.owner}" not in entry_amounts and row is None
            if row is not None and row.charge_microcredits:
                assert row.request_id == claim.owner and hold is not None and hold.status == "settled"
        elif outcome.ended_early:
            # A stream that ended with an error frame: billed for what it delivered (within the hold), or released.
            assert row is not None and row.status in ("cancelled", "error"), (outcome, row)
            assert row.charge_microcredits <= FLAT_PRICE
        else:
            # A refusal or an error answer: nothing was charged, and its hold (if any) released.
            assert outcome.status in (402, 502, 503, 504), outcome
            assert row is not None and row.charge_microcredits == 0, (outcome, row)
            hold = holds_by_key.get(f"call:{row.request_id}")
            assert hold is None or hold.status == "released", hold

    # The balance bound the storm: it covered only so many flat calls while the image job held its share. When
    # the killed replica took most of the storm with it, too few calls reached a live one to run the balance out.
    refused = [o for o in flats if o.error_type == "insufficient_balance"]
    reached_a_live_replica = [o for o in flats if not o.died]
    assert refused or len(reached_a_live_replica) < FLAT_CALLS_COVERED, "the balance never ran out"
    flat_charged = sum(e.amount_microcredits for e in charges if e.idempotency_key.startswith("call:"))
    flat_charged -= replay_usage.charge_microcredits
    assert flat_charged <= CREDIT - IMAGE_HOLD - replay_usage.charge_microcredits
    # No billed call reached the upstream without a hold: upstream flat calls <= flat holds taken.
    flat_upstream = [i for i in upstream if i["model"] in ("deepseek-flat", "deepseek-chat-v3")]
    flat_holds = [h for h in held_rows if h.idempotency_key.startswith("call:") and h.amount_microcredits == FLAT_PRICE]
    assert len([o for o in flats if o.answered]) <= len(flat_upstream) <= len(flat_holds)

    # The sweep released exactly what was still held, charged nothing, and left every settled hold alone.
    assert swept >= len(stuck)
    assert (swept_balance.credits_microcredits, swept_balance.held_microcredits) == (
        balance_row.credits_microcredits,
        0,
    )
    assert len(swept_entries) == len(entries)
    assert all(swept_holds[h.idempotency_key] == "released" for h in stuck)
    assert all(swept_holds[h.idempotency_key] == h.status for h in held_rows if h.status != "held")
