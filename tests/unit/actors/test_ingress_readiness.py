"""The ingress's readiness checks over Ray handles, with stand-ins for the handles: what each verdict says."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from actors.ingress import add_ray_checks
from downcity.readiness import Readiness


class Remote:
    """A handle method whose `.remote()` answers `result` (or raises it)."""

    def __init__(self, result: Any) -> None:
        self.result = result

    def remote(self, *args: Any) -> Awaitable[Any]:
        async def answer() -> Any:
            if isinstance(self.result, BaseException):
                raise self.result
            return self.result

        return answer()


class Provider:
    def __init__(self, missing: list[str]) -> None:
        self.missing_env = Remote(missing)


class Ledger:
    async def ping(self) -> None:
        return None


class Manager:
    def __init__(self, ready: Any) -> None:
        self.ready = Remote(ready)


async def test_ready_when_every_provider_holds_the_required_keys_and_the_actors_answer() -> None:
    readiness = Readiness()
    providers: dict[str, Any] = {"demo": Provider([]), "demo-images": Provider([])}
    add_ray_checks(readiness, providers, Ledger(), Manager(None), ("DEMO_API_KEY",))

    report = await readiness.report()

    assert report.checks == {"provider-demo": "ok", "provider-demo-images": "ok", "ledger": "ok", "job_manager": "ok"}


async def test_a_provider_without_the_seeded_key_and_a_failing_manager_are_named() -> None:
    readiness = Readiness()
    providers: dict[str, Any] = {"demo": Provider(["DEMO_API_KEY"])}
    failing = Manager(RuntimeError("JobManager is recovering\ntraceback line"))
    add_ray_checks(readiness, providers, Ledger(), failing, ("DEMO_API_KEY",))

    report = await readiness.report()

    assert (report.ready, report.checks) == (
        False,
        {"provider-demo": "DEMO_API_KEY not set", "ledger": "ok", "job_manager": "JobManager is recovering"},
    )
