"""The HTTP app factory: a plain FastAPI app over a `Runtime`, testable without a cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from downcity.http.edge import EdgeRules
from downcity.http.errors import install_error_handlers
from downcity.http.limits import BodySizeLimit
from downcity.http.routes import ai, balance, cities, env, images, jobs, public, tokens, usage
from downcity.runtime import Runtime


def create_app(runtime: Runtime, *, manage_runtime: bool = True) -> FastAPI:
    """Build the app; with `manage_runtime` its lifespan starts and stops the runtime's refreshers."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                await runtime.stop()

    app = FastAPI(title="Downcity", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (public, ai, images, balance, cities, tokens, env, usage, jobs):
        app.include_router(module.router)
    # Added last runs first: the size cap, then the edge rule, then the routes.
    app.add_middleware(EdgeRules)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_body_bytes)
    return app
