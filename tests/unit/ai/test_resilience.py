"""Retry, timeout and error-match policies: pure arithmetic, no upstream."""

from __future__ import annotations

import email.utils

import pytest

from downcity.ai.resilience import Failure, Retry, Timeouts, error_match, retry_after_s
from downcity.errors import DowncityHTTPError, upstream_timeout

NOW = 1_800_000_000.0


def upstream(status: int, retry_after: float | None = None) -> Failure:
    return Failure(502, "upstream_error", "status", upstream_status=status, retry_after_s=retry_after)


def test_full_jitter_backoff_doubles_its_ceiling_up_to_the_cap() -> None:
    retry = Retry(attempts=6, backoff_s=0.5, max_backoff_s=3.0)
    ceilings = [retry.delay_s(n, upstream(500), rng=lambda: 1.0) for n in range(1, 6)]
    assert ceilings == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_full_jitter_backoff_scales_the_ceiling_by_the_random_draw() -> None:
    assert Retry(backoff_s=0.4).delay_s(2, upstream(503), rng=lambda: 0.25) == pytest.approx(0.2)


def test_retry_after_replaces_the_backoff_up_to_the_cap() -> None:
    retry = Retry(max_retry_after_s=5.0)
    assert retry.delay_s(1, upstream(429, retry_after=1.0), rng=lambda: 0.0) == 1.0
    assert retry.delay_s(1, upstream(429, retry_after=6.0)) is None


@pytest.mark.parametrize(
    ("failure", "retried"),
    [
        (upstream(429), True),
        (upstream(500), True),
        (upstream(503), True),
        (upstream(400), False),
        (upstream(401), False),
        (Failure(504, "upstream_timeout", "timeout", timeout="first_byte"), True),
        (Failure(502, "upstream_unavailable", "connect"), True),
        (Failure(502, "provider_error"), False),
        (Failure(503, "provider_unavailable"), False),
    ],
)
def test_the_default_retry_covers_connect_timeout_429_and_5xx(failure: Failure, retried: bool) -> None:
    assert Retry().retries(failure) is retried


def test_a_retry_list_may_name_single_statuses() -> None:
    retry = Retry(on=(503,))
    assert (retry.retries(upstream(503)), retry.retries(upstream(500)), retry.retries(upstream(429))) == (
        True,
        False,
        False,
    )


@pytest.mark.parametrize("bad", [0, 11, True])
def test_attempts_must_be_one_to_ten(bad: int) -> None:
    with pytest.raises(ValueError, match="attempts"):
        Retry(attempts=bad)


def test_an_unknown_retry_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'sometimes'"):
        Retry(on=("sometimes",))


def test_retry_after_ms_wins_over_retry_after() -> None:
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "9"}, NOW) == 1.5


def test_retry_after_reads_seconds_and_http_dates() -> None:
    date = email.utils.formatdate(NOW + 4, usegmt=True)
    assert (retry_after_s({"retry-after": "3"}, NOW), retry_after_s({"retry-after": date}, NOW)) == (3.0, 4.0)


def test_an_unreadable_retry_after_is_ignored() -> None:
    assert (retry_after_s({"retry-after": "soon"}, NOW), retry_after_s({}, NOW)) == (None, None)


def test_the_failure_of_an_error_reads_its_detail() -> None:
    error = DowncityHTTPError(502, "upstream_error", "x", detail={"upstream_status": 429, "retry_after_s": 1})
    assert Failure.of(error) == Failure(502, "upstream_error", "status", upstream_status=429, retry_after_s=1.0)
    assert Failure.of(upstream_timeout("late", "connect")).timeout == "connect"


def test_model_timeouts_override_the_providers_one_by_one() -> None:
    provider = Timeouts(connect_s=2, first_byte_s=10, total_s=60)
    assert Timeouts(first_byte_s=3).over(provider) == Timeouts(connect_s=2, first_byte_s=3, total_s=60)


def test_a_caller_may_shorten_the_total_but_never_lengthen_it() -> None:
    timeouts = Timeouts(total_s=10)
    assert timeouts.shortened(2_000) == (Timeouts(total_s=2.0), True)
    assert timeouts.shortened(20_000) == (timeouts, False)
    assert Timeouts().shortened(500) == (Timeouts(total_s=0.5), True)


def test_a_non_positive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="first_byte_s"):
        Timeouts(first_byte_s=0)


def test_error_matches_by_status_and_type_lists() -> None:
    match = error_match({"status": [502, 504], "type": ["upstream_error"]})
    assert (match(upstream(500)), match(Failure(504, "upstream_timeout")), match(Failure(502, "provider_error"))) == (
        True,
        False,
        False,
    )


def test_an_error_match_may_be_a_function_or_left_out() -> None:
    assert error_match(lambda failure: failure.upstream_status == 429)(upstream(429)) is True
    assert error_match(None)(Failure(503, "provider_unavailable")) is True


def test_an_error_match_of_unknown_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="'status', 'upstream_status' and 'type'"):
        error_match({"code": [1]})
