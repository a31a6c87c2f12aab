"""One provider deployment's resilience state: circuit breakers, its key pool, and the attempt loop over them.

Every replica keeps its own state (no hop per call); `ProviderRunner` runs each upstream call through
`Upstream.attempt`, which picks a key, checks the breakers, applies the timeouts, retries what the model's
`Retry` allows and returns the attempts it made, so the ingress can record them on the call's one usage row.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from downcity.ai.context import EnvReader
from downcity.ai.provider import ModelConfig, Provider
from downcity.ai.resilience import Breaker, Failure
from downcity.errors import DowncityHTTPError, upstream_timeout

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
StateListener = Callable[[str, str], None]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Upstream answers that mean this key, not the upstream, is the problem.
_KEY_REFUSALS = frozenset({401, 403, 429})


def counts_against_upstream(failure: Failure) -> bool:
    """Whether a failure says the upstream (or key) is unwell: no connection, a timeout, a 429 or a 5xx."""
    if failure.kind in ("connect", "timeout"):
        return True
    status = failure.upstream_status
    if status is None:
        return failure.type == "upstream_error" and failure.status >= 500
    return status == 429 or status >= 500


class CircuitBreaker:
    """Closed → open after `policy.failures` consecutive failures (or the error rate) → half-open → closed."""

    def __init__(self, policy: Breaker, clock: Clock = time.monotonic, on_change: Callable[[str], None] | None = None):
        self.policy = policy
        self.clock = clock
        self.on_change = on_change
        self.state = CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probing = False
        self._recent: deque[tuple[float, bool]] = deque()

    def _move(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open, only one probe at a time."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.policy.open_s:
            self._move(HALF_OPEN)
            self.probing = False
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN and not self.probing:
            self.probing = True
            return True
        return False

    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 when it is not open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self.policy.open_s - (self.clock() - self.opened_at))

    def _note(self, ok: bool) -> None:
        now = self.clock()
        self._recent.append((now, ok))
        while self._recent and self._recent[0][0] < now - self.policy.window_s:
            self._recent.popleft()

    def succeeded(self) -> None:
        """The upstream served a call: close."""
        self._note(True)
        self.consecutive = 0
        self.probing = False
        self._move(CLOSED)

    def failed(self) -> None:
        """The upstream failed a call: open when the probe failed, or the count or rate says so."""
        self._note(False)
        self.consecutive += 1
        self.probing = False
        if self.state == HALF_OPEN or self.consecutive >= self.policy.failures or self._rate_exceeded():
            self.opened_at = self.clock()
            self._move(OPEN)

    def _rate_exceeded(self) -> bool:
        rate = self.policy.error_rate
        if rate is None or len(self._recent) < self.policy.min_calls:
            return False
        failures = sum(1 for _, ok in self._recent if not ok)
        return failures / len(self._recent) >= rate

    def snapshot(self) -> dict[str, Any]:
        """The breaker for `downcity status`: its state, consecutive failures and seconds until a probe."""
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive,
            "retry_in_s": round(self.retry_in_s(), 3),
        }


def _fingerprint(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


class KeyPool:
    """Round-robin over a provider's key variables, skipping keys that rest (and keys whose breaker is open).

    A rest belongs to the key's value: a key rotated through `/v1/env/set` is back at once.
    """

    def __init__(
        self,
        names: tuple[str, ...],
        rest_s: float,
        env: EnvReader,
        breaker: Breaker | None = None,
        clock: Clock = time.monotonic,
        on_change: StateListener | None = None,
    ) -> None:
        self.names = names
        self.rest_s = rest_s
        self.env = env
        self.clock = clock
        self._next = 0
        self._rests: dict[str, tuple[float, str]] = {}
        self.breakers = {
            name: CircuitBreaker(breaker, clock, _bound(on_change, f"key:{name}")) for name in names if breaker
        }

    def resting(self, name: str) -> bool:
        """Whether the key rests now (its value unchanged since it was rested)."""
        rest = self._rests.get(name)
        if rest is None:
            return False
        until, fingerprint = rest
        value = self.env.get(name)
        if self.clock() >= until or value is None or _fingerprint(value) != fingerprint:
            del self._rests[name]
            return False
        return True

    def pick(self) -> str | None:
        """The next key to use; None when every key rests or is set to no value; the first key when there is one."""
        if len(self.names) == 1:
            return self.names[0]
        for offset in range(len(self.names)):
            name = self.names[(self._next + offset) % len(self.names)]
            breaker = self.breakers.get(name)
            if self.env.get(name) and not self.resting(name) and (breaker is None or breaker.allow()):
                self._next = (self._next + offset + 1) % len(self.names)
                return name
        return None

    def rest(self, name: str) -> None:
        """Rest a key that the upstream refused or rate-limited, for `rest_s` seconds."""
        value = self.env.get(name)
        if value is not None and len(self.names) > 1:
            self._rests[name] = (self.clock() + self.rest_s, _fingerprint(value))

    def snapshot(self) -> list[dict[str, Any]]:
        """Each key by name (never value): resting for how long, and its breaker."""
        keys = []
        for name in self.names:
            rest = self._rests.get(name) if self.resting(name) else None
            entry: dict[str, Any] = {"key": name, "resting_s": round(rest[0] - self.clock(), 3) if rest else 0.0}
            if name in self.breakers:
                entry["breaker"] = self.breakers[name].snapshot()
            keys.append(entry)
        return keys


def _bound(listener: StateListener | None, scope: str) -> Callable[[str], None] | None:
    if listener is None:
        return None
    return lambda state: listener(scope, state)


@dataclass
class Attempt:
    """One try of an upstream call: the model, the status it ended with (200 on success), time and key."""

    model: str
    status: int
    duration_ms: int
    key: str | None = None
    error: str | None = None

    def to_row(self) -> dict[str, Any]:
        """The attempt as stored in the usage row's `attempts` list."""
        row: dict[str, Any] = {"model": self.model, "status": self.status, "duration_ms": self.duration_ms}
        if self.key is not None:
            row["key"] = self.key
        if self.error is not None:
            row["error"] = self.error
        return row


@dataclass(frozen=True)
class Deadline:
    """When the running attempt must have its first byte, and when the whole call must be done (monotonic s)."""

    first_byte_at: float | None
    total_at: float | None
    total_s: float | None
    first_byte_s: float | None
    callers: bool = False

    def soonest(self) -> float | None:
        """The earlier of the two."""
        times = [t for t in (self.first_byte_at, self.total_at) if t is not None]
        return min(times) if times else None

    def fired(self, *, before_first_byte: bool) -> DowncityHTTPError:
        """504 naming the timeout that fired."""
        if before_first_byte and self.first_byte_at is not None and self.first_byte_at == self.soonest():
            return upstream_timeout(
                f"the upstream sent no first byte within {self.first_byte_s:g} s (first_byte timeout)", "first_byte"
            )
        limit = "the caller's timeout" if self.callers else f"{self.total_s:g} s"
        return upstream_timeout(f"the call ran past {limit} (total timeout)", "total")


@dataclass
class Served(Generic[T]):
    """What the attempt loop returns: the successful attempt's result, every attempt, and the key it used."""

    value: T
    attempts: list[dict[str, Any]] = field(default_factory=list)
    key: str | None = None
    deadline: Deadline | None = None


class Upstream:
    """A provider's breaker and key pool, and the attempt loop every upstream call of its replica runs through."""

    def __init__(
        self,
        provider: Provider,
        env: EnvReader,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        on_change: StateListener | None = None,
    ) -> None:
        self.provider = provider
        self.clock = clock
        self.sleep = sleep
        self.rng = rng
        self.breaker = (
            CircuitBreaker(provider.breaker, clock, _bound(on_change, "deployment")) if provider.breaker else None
        )
        self.keys = KeyPool(provider.env_keys, provider.key_rest_s, env, provider.breaker, clock, on_change)

    def scopes(self) -> list[str]:
        """The breakers this upstream keeps: ``deployment`` and ``key:<name>`` for each key with one."""
        keys = [f"key:{name}" for name in self.keys.breakers]
        return (["deployment"] if self.breaker is not None else []) + keys

    def snapshot(self) -> dict[str, Any]:
        """This replica's breaker and keys, for `downcity status`."""
        return {
            "provider": self.provider.id,
            "breaker": self.breaker.snapshot() if self.breaker is not None else None,
            "keys": self.keys.snapshot(),
        }

    def deadline(self, model: ModelConfig, caller_total_ms: int | None, started: float) -> Deadline:
        """The call's deadline from the model's timeouts and the caller's (shorter) total."""
        timeouts, callers = model.timeout_policy.shortened(caller_total_ms)
        total_at = started + timeouts.total_s if timeouts.total_s is not None else None
        return Deadline(None, total_at, timeouts.total_s, timeouts.first_byte_s, callers)

    def _unavailable(self, message: str) -> DowncityHTTPError:
        return DowncityHTTPError(503, "provider_unavailable", message)

    def _admit(self) -> tuple[str | None, DowncityHTTPError | None]:
        if self.breaker is not None and not self.breaker.allow():
            wait = self.breaker.retry_in_s()
            return None, self._unavailable(
                f"provider '{self.provider.id}' is failing; its circuit breaker is open (next probe in {wait:.1f} s)"
            )
        if not self.provider.env_keys:
            return None, None
        key = self.keys.pick()
        if key is None:
            if self.breaker is not None:
                self.breaker.probing = False
            return None, self._unavailable(f"every API key of provider '{self.provider.id}' is resting")
        return key, None

    def _settle(self, key: str | None, failure: Failure | None) -> None:
        against = failure is not None and counts_against_upstream(failure)
        for breaker in (self.breaker, self.keys.breakers.get(key or "")):
            if breaker is None:
                continue
            if against:
                breaker.failed()
            else:
                breaker.succeeded()
        if key is not None and failure is not None and failure.upstream_status in _KEY_REFUSALS:
            self.keys.rest(key)

    async def attempt(
        self,
        model: ModelConfig,
        call: Callable[[str | None], Awaitable[T]],
        caller_total_ms: int | None = None,
    ) -> Served[T]:
        """Run `call(key_name)` until it succeeds or no retry is left; the last failure carries the attempts."""
        started = self.clock()
        deadline = self.deadline(model, caller_total_ms, started)
        retry = model.retry_policy
        attempts: list[dict[str, Any]] = []
        for number in range(1, retry.attempts + 1):
            key, refused = self._admit()
            began = self.clock()
            try:
                if refused is not None:
                    raise refused
                value = await self._timed(call(key), deadline, began)
            except DowncityHTTPError as error:
                failure = Failure.of(error)
                if refused is None:
                    self._settle(key, failure)
                attempts.append(self._record(model, error.status, failure, began, key))
                wait = retry.delay_s(number, failure, self.rng) if retry.retries(failure) else None
                out_of_time = (
                    deadline.total_at is not None and wait is not None and self.clock() + wait >= deadline.total_at
                )
                if refused is not None or wait is None or out_of_time or number == retry.attempts:
                    error.detail["attempts"] = attempts
                    raise
                await self.sleep(wait)
                continue
            self._settle(key, None)
            attempts.append(self._record(model, 200, None, began, key))
            return Served(value, attempts, key, deadline)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _record(
        self, model: ModelConfig, status: int, failure: Failure | None, began: float, key: str | None
    ) -> dict[str, Any]:
        shown = failure.upstream_status or status if failure is not None else status
        return Attempt(
            model=model.id,
            status=shown,
            duration_ms=int((self.clock() - began) * 1000),
            key=key,
            error=failure.timeout or failure.type if failure is not None else None,
        ).to_row()

    async def _timed(self, work: Awaitable[T], deadline: Deadline, began: float) -> T:
        first_byte_at = began + deadline.first_byte_s if deadline.first_byte_s is not None else None
        attempt = Deadline(first_byte_at, deadline.total_at, deadline.total_s, deadline.first_byte_s, deadline.callers)
        when = attempt.soonest()
        if when is None:
            return await work
        try:
            async with asyncio.timeout(max(0.0, when - self.clock())):
                return await work
        except TimeoutError:
            raise attempt.fired(before_first_byte=True) from None
