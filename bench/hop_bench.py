"""Provider-hop benchmark: a `DeploymentHandle` call against a byte relay to the replica's direct-ingress port.

Not a test. Run: `.venv/bin/python bench/hop_bench.py` (needs `wrk`). In Serve's throughput-optimized HAProxy
mode every replica of an application's ingress deployment listens on a direct-ingress HTTP port. An `Echo`
application stands in for a provider deployment (a small JSON answer); a `Caller` application reaches it two
ways, as the ingress would reach a provider:

- `handle`: `await handle.echo.remote(body)`, today's path (Ray's task machinery, pickled arguments);
- `relay`: the Ray Serve LLM byte-relay pattern: the handle's router picks a replica (`choose_replica`, public
  in Ray 2.60) whose direct-ingress endpoint (`ReplicaSelection._replica.backend_http_endpoint`, private) is
  cached and refreshed, then one HTTP/1.1 keep-alive POST from a pooled aiohttp session.

Each is measured at `--connections` and at one connection, next to the `Echo` app called directly (the floor),
with every run's non-2xx count; a run with any is marked INVALID.
"""

# No `from __future__ import annotations`: FastAPI must see `Request` itself in the pickled-by-value routes.
import argparse
import os
import shutil
import sys
from typing import Any

from actors.serving import free_port

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Imported first: it puts Serve's throughput mode, on ports of this run's own, into the environment.
from serve_bench import Run, wrk

# isort: split
import aiohttp
import httpx
import ray
from fastapi import FastAPI, Request
from ray import serve

BODY = {"model": "demo-chat", "messages": [{"role": "user", "content": "hello bench"}]}
ANSWER = {"id": "chatcmpl-1", "choices": [{"message": {"role": "assistant", "content": "hello"}}]}
ENDPOINT_SAMPLES = 8

echo_app = FastAPI()
caller_app = FastAPI()


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(echo_app)
class Echo:
    """A provider stand-in, reachable by handle and over its direct-ingress HTTP port."""

    async def echo(self, body: dict[str, Any]) -> dict[str, Any]:
        return ANSWER

    @echo_app.post("/")
    async def http_echo(self, request: Request) -> dict[str, Any]:
        await request.body()
        return ANSWER


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(caller_app)
class Caller:
    """Calls `Echo` by handle, or relays the request to an `Echo` replica's own HTTP port."""

    def __init__(self) -> None:
        self._handle = serve.get_deployment_handle("Echo", app_name="echo")
        self._endpoints: list[tuple[str, int]] = []
        self._next = 0
        self._session: aiohttp.ClientSession | None = None

    async def _endpoint(self) -> tuple[str, int]:
        if not self._endpoints:
            seen: set[tuple[str, int]] = set()
            for _ in range(ENDPOINT_SAMPLES):
                async with self._handle.choose_replica() as selection:
                    endpoint = selection._replica.backend_http_endpoint
                    if endpoint is not None:
                        host, port = endpoint
                        # A replica binds Serve's HTTP host (127.0.0.1 here) but reports its node's IP.
                        seen.add(("127.0.0.1" if host == ray.util.get_node_ip_address() else host, port))
            self._endpoints = sorted(seen)
        self._next = (self._next + 1) % len(self._endpoints)
        return self._endpoints[self._next]

    @caller_app.post("/handle")
    async def by_handle(self, request: Request) -> Any:
        return await self._handle.echo.remote(await request.json())

    @caller_app.post("/relay")
    async def by_relay(self, request: Request) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        host, port = await self._endpoint()
        body = await request.body()
        headers = {"content-type": "application/json"}
        async with self._session.post(f"http://{host}:{port}/echo/", data=body, headers=headers) as answer:
            return await answer.json()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=6)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    http_port = free_port()
    ray.init(address="local", include_dashboard=False, namespace="downcity-hop", log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(Echo.bind(), name="echo", route_prefix="/echo")
        serve.run(Caller.bind(), name="caller", route_prefix="/caller")
        url = f"http://127.0.0.1:{http_port}"
        targets = [("Echo app direct (floor)", f"{url}/echo/"), ("handle", f"{url}/caller/handle")]
        targets.append(("byte relay", f"{url}/caller/relay"))
        for name, target in targets:
            answer = httpx.post(target, json=BODY, timeout=30)
            if answer.status_code != 200:
                sys.exit(f"{name}: {answer.status_code} {answer.text[:300]}")
        results: list[tuple[str, Run, Run]] = []
        for name, target in targets:
            wrk(target, BODY, {}, args.connections, 2)
            results.append((name, wrk(target, BODY, {}, args.connections, args.seconds), wrk(target, BODY, {}, 1, 3)))
    finally:
        serve.shutdown()
        ray.shutdown()
    print(f"\n{args.connections} connections (and 1), {args.seconds}s each; load average {os.getloadavg()}")
    print(f"{'path':26} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50@1':>8} {'non-2xx':>8}")
    for name, loaded, single in results:
        failed = loaded.failed + single.failed
        print(f"{name:26} {loaded.rps:8.0f} {loaded.p50_ms:8.2f} {loaded.p99_ms:8.2f} {single.p50_ms:8.2f} {failed:8d}")
    if any(loaded.failed + single.failed for _, loaded, single in results):
        print("\nINVALID RUN: some requests failed")


if __name__ == "__main__":
    main()
