"""Readiness: named checks that must all pass before `/ready` answers 200 (`/health` is liveness only)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from downcity.env import EnvCache

ReadinessCheck = Callable[[], Awaitable[None]]
"""Returns once its part can serve; raises when it cannot, the exception's text saying why."""

DEFAULT_CHECK_TIMEOUT_S = 2.0
READY = "ok"


class NotReady(Exception):
    """A part of the system that cannot serve yet."""


@dataclass(frozen=True)
class ReadinessReport:
    """Every check's verdict: "ok" or why not."""

    checks: dict[str, str]

    @property
    def ready(self) -> bool:
        """Whether every check passed."""
        return all(verdict == READY for verdict in self.checks.values())

    @property
    def waiting(self) -> str:
        """The failing checks and their reasons, for humans."""
        return "; ".join(f"{name}: {verdict}" for name, verdict in self.checks.items() if verdict != READY)


class Readiness:
    """The checks one process answers `/ready` with, run concurrently, each within a timeout."""

    def __init__(self, timeout_s: float = DEFAULT_CHECK_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._checks: dict[str, ReadinessCheck] = {}

    @property
    def names(self) -> list[str]:
        """The checks, in the order they were added."""
        return list(self._checks)

    def add(self, name: str, check: ReadinessCheck) -> None:
        """Require `check` to pass; a second check under the same name is a ValueError."""
        if name in self._checks:
            raise ValueError(f"readiness check {name!r} is already registered")
        self._checks[name] = check

    async def report(self) -> ReadinessReport:
        """Run every check now."""
        verdicts = await asyncio.gather(*(self._verdict(check) for check in self._checks.values()))
        return ReadinessReport(dict(zip(self._checks, verdicts, strict=True)))

    async def _verdict(self, check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except TimeoutError:
            return f"no answer within {self.timeout_s:g}s"
        except Exception as error:
            # A failed Ray call's text carries the remote traceback; its first line says what failed.
            return (str(error) or type(error).__name__).splitlines()[0]
        return READY


def missing_env(env: EnvCache, keys: Iterable[str]) -> list[str]:
    """The keys of `keys` this process's env cache does not hold."""
    return [key for key in keys if not env.get(key)]


def required_env_check(env: EnvCache, keys: Iterable[str]) -> ReadinessCheck:
    """A check that passes once every key is stored and visible to this process."""
    required = tuple(keys)

    async def check() -> None:
        missing = missing_env(env, required)
        if missing:
            raise NotReady(f"{', '.join(missing)} not set")

    return check


def report_body(report: ReadinessReport) -> dict[str, Any]:
    """The JSON body of `/ready`: the checks, and on 503 the error envelope every error uses."""
    if report.ready:
        return {"status": "ready", "checks": report.checks}
    error = {"type": "not_ready", "message": f"waiting for {report.waiting}"}
    return {"status": "not_ready", "error": error, "checks": report.checks}
