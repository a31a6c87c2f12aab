"""The Overview's buckets: every hour or day of the window, zero where nothing ran, biggest series first."""

from __future__ import annotations

from downcity.http.console.overview import bucket_series
from downcity.ledger.usage import MS_PER_HOUR, UsageBucketRow

START = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def bucket(hour: int, key: str | None, requests: int, charge: int = 0) -> UsageBucketRow:
    return UsageBucketRow(
        start_ms=START + hour * MS_PER_HOUR,
        key=key,
        requests=requests,
        errors=0,
        total_tokens=requests * 10,
        charge_microcredits=charge,
    )


def test_every_bucket_of_the_window_is_present_with_zeros_between_calls() -> None:
    rows = [bucket(0, "web", 2, 100), bucket(3, "web", 1, 50), bucket(1, "ext", 5)]
    starts, series = bucket_series(rows, START + 1, START + 4 * MS_PER_HOUR, "hour")
    assert starts == [START + hour * MS_PER_HOUR for hour in range(4)]
    assert [s.key for s in series] == ["ext", "web"]
    assert series[1].values["requests"] == [2, 0, 0, 1]
    assert series[1].totals == {"requests": 3, "errors": 0, "total_tokens": 30, "charge_microcredits": 150}


def test_calls_without_a_model_form_their_own_series() -> None:
    _, series = bucket_series([bucket(0, None, 4)], START, START + MS_PER_HOUR, "hour")
    assert [(s.key, s.totals["requests"]) for s in series] == [("(none)", 4)]


def test_no_rows_give_empty_series_over_every_bucket() -> None:
    starts, series = bucket_series([], START, START + 2 * 86_400_000, "day")
    assert (len(starts), series) == (2, [])
