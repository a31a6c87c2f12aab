"""`downcity status` shows each provider replica's breaker and key pool as the replicas report them."""

from __future__ import annotations

import pytest
from rich.console import Console

from actors.cli import status
from actors.cli.status import ActorHealth, ClusterStatus, ReplicaResilience


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "console", Console(width=200, highlight=False, soft_wrap=True))


def printed(replicas: list[ReplicaResilience]) -> str:
    report = ClusterStatus(
        address="127.0.0.1:6379",
        nodes=1,
        applications=[],
        ledger=[ActorHealth("downcity-ledger", True, "")],
        job_manager=ActorHealth("downcity-jobs", True, ""),
        resilience=replicas,
    )
    with status.console.capture() as captured:
        status._print(report)
    return captured.get()


def test_an_open_breaker_and_a_resting_key_are_shown_by_replica() -> None:
    out = printed(
        [
            ReplicaResilience(
                replica="downcity#provider-openai#a1b2",
                provider="openai",
                breaker={"state": "open", "consecutive_failures": 5, "retry_in_s": 12.5},
                keys=[{"key": "A_KEY", "resting_s": 30.0}, {"key": "B_KEY", "resting_s": 0.0}],
            )
        ]
    )
    [row] = [line.replace("│", " ") for line in out.splitlines() if "provider-openai" in line]
    assert row.split() == [
        "downcity#provider-openai#a1b2", "open", "(probe", "in", "12.5", "s)", "A_KEY", "resting", "30", "s,", "B_KEY",
    ]  # fmt: skip


def test_a_closed_breaker_without_keys_shows_dashes() -> None:
    out = printed(
        [
            ReplicaResilience(
                replica="downcity#provider-demo#c3",
                provider="demo",
                breaker={"state": "closed", "consecutive_failures": 0, "retry_in_s": 0.0},
                keys=[],
            )
        ]
    )
    [row] = [line.replace("│", " ") for line in out.splitlines() if "provider-demo" in line]
    assert row.split() == ["downcity#provider-demo#c3", "closed", "-"]
