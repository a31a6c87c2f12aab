"""Every route and dependency is async: FastAPI runs a plain function on its thread pool, one hop per request."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

import downcity.http.routes


def _sync_calls(dependant: Dependant) -> list[str]:
    call = dependant.call
    found = [] if call is None or inspect.iscoroutinefunction(call) else [getattr(call, "__name__", repr(call))]
    for dependency in dependant.dependencies:
        found.extend(_sync_calls(dependency))
    return found


def test_no_route_or_dependency_runs_on_the_thread_pool() -> None:
    routes = [
        route
        for module in pkgutil.iter_modules(downcity.http.routes.__path__)
        for route in importlib.import_module(f"downcity.http.routes.{module.name}").router.routes
        if isinstance(route, APIRoute)
    ]

    assert len(routes) > 20
    assert {route.path: _sync_calls(route.dependant) for route in routes if _sync_calls(route.dependant)} == {}
