"""Circuit breakers, key pools and the attempt loop, on an injected clock: no upstream, no Ray."""

from __future__ import annotations

import pytest

from downcity.ai.openai_compatible import OpenAICompatibleProvider
from downcity.ai.provider import ModelConfig
from downcity.ai.resilience import Breaker, Retry
from downcity.errors import DowncityHTTPError, upstream_error
from downcity.gateway.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, KeyPool, Upstream


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Env(dict[str, str]):
    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key, default)


def failing(status: int, retry_after: float | None = None) -> DowncityHTTPError:
    error = upstream_error(f"upstream returned HTTP {status}")
    error.detail = {"upstream_status": status}
    if retry_after is not None:
        error.detail["retry_after_s"] = retry_after
    return error


def model(**provider: object) -> ModelConfig:
    return OpenAICompatibleProvider("p", base_url="http://upstream.test/v1", **provider).model("m")  # type: ignore[arg-type]


def test_a_breaker_opens_after_k_consecutive_failures_and_fails_fast() -> None:
    clock = Clock()
    breaker = CircuitBreaker(Breaker(failures=3, open_s=10), clock)
    breaker.failed()
    breaker.failed()
    assert (breaker.state, breaker.allow()) == (CLOSED, True)
    breaker.failed()
    assert (breaker.state, breaker.allow(), breaker.retry_in_s()) == (OPEN, False, 10.0)


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = CircuitBreaker(Breaker(failures=2), Clock())
    breaker.failed()
    breaker.succeeded()
    breaker.failed()
    assert breaker.state == CLOSED


def test_an_open_breaker_half_opens_for_one_probe_and_closes_on_its_success() -> None:
    clock = Clock()
    breaker = CircuitBreaker(Breaker(failures=1, open_s=5), clock)
    breaker.failed()
    clock.now += 5
    assert (breaker.allow(), breaker.state, breaker.allow()) == (True, HALF_OPEN, False)
    breaker.succeeded()
    assert (breaker.state, breaker.allow()) == (CLOSED, True)


def test_a_failed_probe_opens_the_breaker_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(Breaker(failures=3, open_s=5), clock)
    for _ in range(3):
        breaker.failed()
    clock.now += 5
    assert breaker.allow()
    breaker.failed()
    assert (breaker.state, breaker.retry_in_s()) == (OPEN, 5.0)


def test_a_breaker_opens_on_its_error_rate_over_the_window() -> None:
    clock = Clock()
    breaker = CircuitBreaker(Breaker(failures=100, error_rate=0.5, window_s=10, min_calls=4), clock)
    for ok in (True, False, True):
        breaker.succeeded() if ok else breaker.failed()
    assert breaker.state == CLOSED
    breaker.failed()
    assert breaker.state == OPEN


def test_outcomes_older_than_the_window_leave_the_error_rate() -> None:
    clock = Clock()
    breaker = CircuitBreaker(Breaker(failures=100, error_rate=0.5, window_s=10, min_calls=2), clock)
    breaker.failed()
    clock.now += 11
    breaker.succeeded()
    breaker.succeeded()
    assert breaker.state == CLOSED


def test_a_breaker_reports_each_state_change() -> None:
    clock = Clock()
    seen: list[str] = []
    breaker = CircuitBreaker(Breaker(failures=1, open_s=1), clock, seen.append)
    breaker.failed()
    clock.now += 1
    breaker.allow()
    breaker.succeeded()
    assert seen == [OPEN, HALF_OPEN, CLOSED]


def test_a_key_pool_spreads_calls_round_robin() -> None:
    pool = KeyPool(("A", "B", "C"), 30, Env(A="a", B="b", C="c"))
    assert [pool.pick() for _ in range(4)] == ["A", "B", "C", "A"]


def test_a_rested_key_is_skipped_until_its_rest_ends() -> None:
    clock = Clock()
    pool = KeyPool(("A", "B"), 30, Env(A="a", B="b"), clock=clock)
    pool.rest("A")
    assert [pool.pick() for _ in range(3)] == ["B", "B", "B"]
    clock.now += 30
    assert {pool.pick(), pool.pick()} == {"A", "B"}


def test_a_rotated_key_is_back_at_once() -> None:
    env = Env(A="a", B="b")
    pool = KeyPool(("A", "B"), 30, env, clock=Clock())
    pool.rest("A")
    env["A"] = "a2"
    assert pool.resting("A") is False


def test_an_unset_key_is_skipped_and_all_resting_gives_none() -> None:
    pool = KeyPool(("A", "B"), 30, Env(B="b"), clock=Clock())
    assert pool.pick() == "B"
    pool.rest("B")
    assert pool.pick() is None


def test_a_pool_snapshot_names_keys_never_values() -> None:
    clock = Clock()
    pool = KeyPool(("A", "B"), 30, Env(A="secret-a", B="secret-b"), clock=clock)
    pool.rest("B")
    clock.now += 10
    assert pool.snapshot() == [{"key": "A", "resting_s": 0.0}, {"key": "B", "resting_s": 20.0}]


class Loop:
    """An Upstream on a fake clock whose sleeps advance it, and the waits it asked for."""

    def __init__(self, target: ModelConfig) -> None:
        self.clock = Clock()
        self.waits: list[float] = []
        self.keys: list[str | None] = []
        env = Env({name: f"value-{name}" for name in target.provider.env_keys})
        self.upstream = Upstream(target.provider, env, clock=self.clock, sleep=self.sleep, rng=lambda: 0.5)  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.clock.now += seconds

    def answering(self, *outcomes: DowncityHTTPError | str):  # type: ignore[no-untyped-def]
        queue = list(outcomes)

        async def call(key: str | None) -> str:
            self.keys.append(key)
            self.clock.now += 0.25
            outcome = queue.pop(0)
            if isinstance(outcome, DowncityHTTPError):
                raise outcome
            return outcome

        return call


async def test_a_500_then_a_200_is_one_answer_with_two_attempts() -> None:
    target = model(retry=Retry(attempts=3, backoff_s=1.0))
    loop = Loop(target)
    served = await loop.upstream.attempt(target, loop.answering(failing(500), "ok"))
    assert (served.value, loop.waits) == ("ok", [0.5])
    assert served.attempts == [
        {"model": "m", "status": 500, "duration_ms": 250, "error": "upstream_error"},
        {"model": "m", "status": 200, "duration_ms": 250},
    ]


async def test_retry_after_sets_the_wait() -> None:
    target = model(retry=Retry(attempts=2))
    loop = Loop(target)
    await loop.upstream.attempt(target, loop.answering(failing(429, retry_after=1.0), "ok"))
    assert loop.waits == [1.0]


async def test_exhausted_retries_raise_the_last_error_with_every_attempt() -> None:
    target = model(retry=Retry(attempts=2))
    loop = Loop(target)
    with pytest.raises(DowncityHTTPError) as raised:
        await loop.upstream.attempt(target, loop.answering(failing(503), failing(502)))
    assert [a["status"] for a in raised.value.detail["attempts"]] == [503, 502]


async def test_a_client_error_is_not_retried() -> None:
    target = model(retry=Retry(attempts=3))
    loop = Loop(target)
    with pytest.raises(DowncityHTTPError):
        await loop.upstream.attempt(target, loop.answering(failing(400), "ok"))
    assert (len(loop.keys), loop.waits) == (1, [])


async def test_no_retry_outlives_the_total_timeout() -> None:
    target = model(retry=Retry(attempts=3), timeouts=None)
    loop = Loop(target)
    with pytest.raises(DowncityHTTPError):
        await loop.upstream.attempt(target, loop.answering(failing(429, retry_after=2.0), "ok"), caller_total_ms=1_000)
    assert (len(loop.keys), loop.waits) == (1, [])


async def test_an_open_breaker_fails_fast_with_503_provider_unavailable() -> None:
    target = model(breaker=Breaker(failures=2, open_s=30))
    loop = Loop(target)
    for _ in range(2):
        with pytest.raises(DowncityHTTPError):
            await loop.upstream.attempt(target, loop.answering(failing(500)))
    with pytest.raises(DowncityHTTPError) as raised:
        await loop.upstream.attempt(target, loop.answering("never called"))
    assert (raised.value.status, raised.value.type, len(loop.keys)) == (503, "provider_unavailable", 2)
    assert loop.upstream.snapshot()["breaker"] == {"state": "open", "consecutive_failures": 2, "retry_in_s": 30.0}


async def test_a_key_answering_429_rests_and_the_retry_takes_the_next_key() -> None:
    target = model(env_key=["A", "B"], retry=Retry(attempts=2), key_rest_s=60)
    loop = Loop(target)
    served = await loop.upstream.attempt(target, loop.answering(failing(429), "ok"))
    assert (loop.keys, served.key) == (["A", "B"], "B")
    later = await loop.upstream.attempt(target, loop.answering("ok"))
    assert later.key == "B"
    loop.clock.now += 60
    assert {(await loop.upstream.attempt(target, loop.answering("ok"))).key for _ in range(2)} == {"A", "B"}


async def test_every_key_resting_fails_fast() -> None:
    target = model(env_key=["A", "B"], key_rest_s=60)
    loop = Loop(target)
    for _ in range(2):
        with pytest.raises(DowncityHTTPError):
            await loop.upstream.attempt(target, loop.answering(failing(401)))
    with pytest.raises(DowncityHTTPError, match="every API key of provider 'p' is resting"):
        await loop.upstream.attempt(target, loop.answering("never called"))
