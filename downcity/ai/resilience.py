"""What a provider or model declares about failing upstreams: `Retry`, `Timeouts`, `Breaker` and error matches.

Plain values and the arithmetic over them (backoff with full jitter, `Retry-After`); the state that changes per
call (circuit breakers, key pools, the attempt loop) lives in `downcity.gateway.resilience`.
"""

from __future__ import annotations

import email.utils
import math
import random
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

from downcity.errors import DowncityHTTPError

# What a retry rule may name besides an HTTP status: a connection failure, a timeout, or a class of statuses.
_RETRY_KINDS = frozenset({"connect", "timeout", "4xx", "5xx"})
TIMEOUT_KINDS = ("connect", "first_byte", "total", "read")


@dataclass(frozen=True)
class Failure:
    """One failed attempt as retry rules and error fallback predicates see it.

    `status` and `type` are what the caller would get (502 `upstream_error`, 504 `upstream_timeout`, 503
    `provider_unavailable`, …); `upstream_status` is the upstream's own HTTP status when it answered one;
    `kind` is ``connect``, ``timeout``, ``status`` or ``other``; `timeout` names the timeout that fired.
    """

    status: int
    type: str
    kind: str = "other"
    upstream_status: int | None = None
    retry_after_s: float | None = None
    timeout: str | None = None

    @classmethod
    def of(cls, error: DowncityHTTPError) -> Failure:
        """The failure an error describes, from the detail the upstream client attached."""
        detail = error.detail
        upstream_status = detail.get("upstream_status")
        retry_after = detail.get("retry_after_s")
        timeout = detail.get("timeout")
        kind = detail.get("kind")
        if kind is None:
            kind = "timeout" if error.type == "upstream_timeout" else "status" if upstream_status else "other"
        return cls(
            status=error.status,
            type=error.type,
            kind=str(kind),
            upstream_status=upstream_status if isinstance(upstream_status, int) else None,
            retry_after_s=float(retry_after) if isinstance(retry_after, int | float) else None,
            timeout=timeout if isinstance(timeout, str) else None,
        )


def _check_retry_on(on: Collection[int | str]) -> tuple[int | str, ...]:
    for item in on:
        if isinstance(item, bool) or not ((isinstance(item, int) and 400 <= item <= 599) or item in _RETRY_KINDS):
            raise ValueError(f"retry 'on' takes HTTP statuses 400-599 and {sorted(_RETRY_KINDS)}, not {item!r}")
    return tuple(on)


@dataclass(frozen=True)
class Retry:
    """Up to `attempts` tries of one upstream call, on the failures `on` names, backing off with full jitter.

    The n-th retry waits a uniform random time in ``[0, min(max_backoff_s, backoff_s * 2**(n-1))]``, or what the
    upstream's `Retry-After` / `retry-after-ms` asks when it sent one; an upstream asking for more than
    `max_retry_after_s` is not retried (its error goes on to error fallback). No retry outlives the call's
    total timeout, and a stream is never retried once its first byte was sent on.
    """

    attempts: int = 3
    on: tuple[int | str, ...] = ("connect", "timeout", 429, "5xx")
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_retry_after_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or not 1 <= self.attempts <= 10:
            raise ValueError("retry attempts must be an integer from 1 to 10")
        for name in ("backoff_s", "max_backoff_s", "max_retry_after_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0 or not math.isfinite(value):
                raise ValueError(f"retry {name} must be a non-negative number of seconds")
        object.__setattr__(self, "on", _check_retry_on(self.on))

    def retries(self, failure: Failure) -> bool:
        """Whether `on` covers this failure."""
        if failure.kind == "connect":
            return "connect" in self.on
        if failure.kind == "timeout":
            return "timeout" in self.on
        status = failure.upstream_status
        if status is None:
            return failure.status >= 500 and failure.type == "upstream_error" and "5xx" in self.on
        return status in self.on or f"{status // 100}xx" in self.on

    def delay_s(self, retry: int, failure: Failure, rng: Callable[[], float] = random.random) -> float | None:
        """How long to wait before retry number `retry` (1-based); None when the upstream asks too long a wait."""
        if failure.retry_after_s is not None:
            return failure.retry_after_s if failure.retry_after_s <= self.max_retry_after_s else None
        ceiling: float = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        return rng() * ceiling


NO_RETRY = Retry(attempts=1)


def retry_after_s(headers: Mapping[str, str], now_s: float) -> float | None:
    """The wait an upstream asks for: `retry-after-ms`, else `Retry-After` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    after = headers.get("retry-after")
    if after is None:
        return None
    after = after.strip()
    if after.isdigit():
        return float(after)
    try:
        when = email.utils.parsedate_to_datetime(after)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now_s)


def _check_seconds(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, int | float) or value <= 0 or not math.isfinite(value)):
        raise ValueError(f"timeout {name} must be a positive number of seconds or None")


@dataclass(frozen=True)
class Timeouts:
    """Connect, first-byte and total timeouts in seconds; None leaves one unset (a model's inherits its provider's).

    `connect_s` bounds opening the connection, `first_byte_s` the wait for the answer's first byte (each
    attempt), `total_s` the whole call, retries included. A caller may shorten `total_s`, never lengthen it.
    """

    connect_s: float | None = None
    first_byte_s: float | None = None
    total_s: float | None = None

    def __post_init__(self) -> None:
        _check_seconds("connect_s", self.connect_s)
        _check_seconds("first_byte_s", self.first_byte_s)
        _check_seconds("total_s", self.total_s)

    def over(self, base: Timeouts) -> Timeouts:
        """These timeouts, taking `base`'s where these leave one unset."""
        return Timeouts(
            connect_s=self.connect_s if self.connect_s is not None else base.connect_s,
            first_byte_s=self.first_byte_s if self.first_byte_s is not None else base.first_byte_s,
            total_s=self.total_s if self.total_s is not None else base.total_s,
        )

    def shortened(self, total_ms: int | None) -> tuple[Timeouts, bool]:
        """These timeouts with the caller's total (never longer than ours); and whether the caller's is the one."""
        if total_ms is None:
            return self, False
        asked = total_ms / 1000
        if self.total_s is not None and self.total_s <= asked:
            return self, False
        return replace(self, total_s=asked), True


@dataclass(frozen=True)
class Breaker:
    """When a provider deployment (or one of its keys) stops being called for a while.

    It opens after `failures` consecutive failures, or when at least `min_calls` of the calls in the last
    `window_s` seconds failed at `error_rate` or more; stays open `open_s` seconds (calls fail fast with 503
    `provider_unavailable`, or fall back), then lets one probe through (half-open): its success closes the
    breaker, its failure opens it again. Failures are what `Retry.on` would retry, whether or not retries are on.
    """

    failures: int = 5
    error_rate: float | None = None
    window_s: float = 30.0
    min_calls: int = 10
    open_s: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            raise ValueError("breaker failures must be a positive integer")
        if self.error_rate is not None and not 0 < self.error_rate <= 1:
            raise ValueError("breaker error_rate must be in (0, 1]")
        if self.window_s <= 0 or self.open_s <= 0 or self.min_calls < 1:
            raise ValueError("breaker window_s and open_s must be positive, min_calls at least 1")


ErrorMatch = Callable[[Failure], bool]


def error_match(match: Any) -> ErrorMatch:
    """An error fallback predicate from a function, ``{"status": [...], "type": [...]}`` or None (every error)."""
    if match is None:
        return lambda failure: True
    if callable(match):
        return match  # type: ignore[no-any-return]
    if not isinstance(match, Mapping) or not match or not set(match) <= {"status", "type", "upstream_status"}:
        raise ValueError(
            "an error fallback 'match' is a function, or a dict of 'status', 'upstream_status' and 'type' lists"
        )
    wanted = {name: frozenset(values) for name, values in match.items()}

    def matches(failure: Failure) -> bool:
        return all(getattr(failure, name) in values for name, values in wanted.items())

    return matches
