"""Where a billed call's CPU goes, per process: py-spy samples of each replica and actor under wrk load.

Not a test. Run: `.venv/bin/python bench/profile.py [--target leases] [--route chat] [--seconds 20]` (needs `wrk`
and `py-spy`, both in the bench's set-up: `apt-get install wrk`, `pip install py-spy`). It starts what
`serve_bench.py` starts, loads one route of one app at `--connections`, and samples the app's ingress replica,
its provider replica and the Ledger actor for the same seconds. For each process it prints the share of its busy
samples by where the innermost frame runs (our code, Serve, Ray core, the ASGI stack, asyncio, the HTTP client,
the database driver), the innermost frames that cost most, and our own functions by inclusive time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Imported first: it puts Serve's throughput mode, on ports of this run's own, into the environment.
from serve_bench import ROUTES, running, wrk

# Where a frame's file lives (py-spy names it from its package root), most specific first: the first package
# that a frame's path starts with names its part.
PARTS = (
    ("downcity/", "downcity"),
    ("actors/", "downcity"),
    ("ray/serve/", "ray serve"),
    ("ray/", "ray core"),
    ("grpc/", "ray core"),
    ("starlette/", "asgi stack"),
    ("fastapi/", "asgi stack"),
    ("pydantic", "asgi stack"),
    ("uvicorn/", "asgi stack"),
    ("asyncio/", "asyncio"),
    ("aiohttp/", "http client"),
    ("httpx/", "http client"),
    ("httpcore/", "http client"),
    ("sqlalchemy/", "database"),
    ("asyncpg/", "database"),
    ("threading.py", "threads (native code)"),
)
APPS = {"per-call": "downcity", "leases": "downcity-leases"}
LEDGER_TITLE = "ray::LedgerActor"
PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def part_of(frame: str) -> str:
    """The part of the program a py-spy frame (`function (path:line)`) runs in."""
    path = frame.partition(" (")[2]
    return next((part for package, part in PARTS if path.startswith(package) or f"/{package}" in path), "other")


def short(frame: str) -> str:
    """`function (package/module.py)`, without the line and the site-packages prefix."""
    function, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{function} ({path})"


@dataclass
class Profile:
    """One process's samples: busy samples in all, by part, by innermost frame, and our functions inclusive."""

    name: str
    samples: int = 0
    parts: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)
    ours: Counter[str] = field(default_factory=Counter)

    @classmethod
    def read(cls, name: str, raw: str) -> Profile:
        """Fold py-spy's raw output (`frame;frame;… count` per line, outermost first)."""
        profile = cls(name)
        for line in raw.splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            profile.samples += count
            profile.parts[part_of(frames[-1])] += count
            profile.leaves[short(frames[-1])] += count
            for frame in {short(f) for f in frames if part_of(f) == "downcity"}:
                profile.ours[frame] += count
        return profile

    def print(self, top: int) -> None:
        print(f"\n== {self.name}: {self.samples} busy samples")
        if not self.samples:
            return
        for part, count in self.parts.most_common():
            print(f"  {part:14} {count / self.samples:6.1%}")
        print("  innermost frames:")
        for frame, count in self.leaves.most_common(top):
            print(f"    {count / self.samples:6.1%}  {frame}")
        print("  our functions, inclusive:")
        for frame, count in self.ours.most_common(top):
            print(f"    {count / self.samples:6.1%}  {frame}")


def processes(app: str) -> dict[str, int]:
    """The pids of the app's replicas (by deployment) and of the Ledger actor, read from Ray's process titles
    (`ray::ServeReplica:<app>:<deployment>`, `ray::LedgerActor…`)."""
    pids = {}
    listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    for line in listing.splitlines():
        pid, _, title = line.strip().partition(" ")
        if title.startswith(f"ray::ServeReplica:{app}:"):
            pids[title.split(":")[-1].split(".")[0].strip()] = int(pid)
        elif title.startswith(LEDGER_TITLE):
            pids["ledger"] = int(pid)
    return pids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=sorted(APPS), default="leases", help="which app to load")
    parser.add_argument("--route", default="/v1/ai/chat/completions", help="a route name serve_bench measures")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here, one file per process")
    args = parser.parse_args()
    name, path, body = next(route for route in ROUTES if route[0] == args.route)
    with running() as bench, tempfile.TemporaryDirectory() as out:
        prefix = "/leases" if args.target == "leases" else ""
        url = f"{bench.url}{prefix}{path}"
        wrk(url, body, bench.user, args.connections, 3)
        pids = processes(APPS[args.target])
        sampling = ["--duration", str(args.seconds), "--rate", str(args.rate), "--format", "raw", "--nonblocking"]
        spies = {
            process: subprocess.Popen(
                [PY_SPY, "record", "--pid", str(pid), *sampling, "--output", f"{out}/{process}.txt"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for process, pid in pids.items()
        }
        loaded = wrk(url, body, bench.user, args.connections, args.seconds)
        for spy in spies.values():
            spy.wait()
        profiles = [Profile.read(process, Path(f"{out}/{process}.txt").read_text()) for process in spies]
        if args.raw is not None:
            shutil.copytree(out, args.raw, dirs_exist_ok=True)
    print(f"{args.target} {name}, {args.connections} connections, {args.seconds}s: {loaded.rps:.0f} req/s,")
    print(f"p50 {loaded.p50_ms:.2f} ms, {loaded.requests} requests, {loaded.failed} non-2xx")
    if loaded.failed:
        print("INVALID RUN: requests failed; the profile is not of billed calls")
    for profile in profiles:
        profile.print(args.top)


if __name__ == "__main__":
    main()
