"""The HTTP app factory: a plain FastAPI app over a `Runtime`, testable without a cluster."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from downcity.calls.metering import count_tokens
from downcity.http.console import SystemProbe, install_console
from downcity.http.edge import EdgeRules
from downcity.http.errors import install_error_handlers
from downcity.http.limits import BodySizeLimit
from downcity.http.routes import ai, balance, cities, env, images, jobs, public, quotas, tokens, usage
from downcity.runtime import Runtime
from downcity.secrets import SCRUBBER, SecretSource, install_log_scrubbing


def _secrets_of(runtime: Runtime) -> SecretSource:
    """The admin key, the master key and every provider's keys as this runtime currently holds them."""
    ref = weakref.ref(runtime)

    def secrets() -> list[str | None]:
        live = ref()
        if live is None:
            return []
        names = {name for p in live.federation.providers.values() for name in (*p.env, p.env_key) if name}
        settings = live.settings
        declared = map(live.env.get, names)
        return [
            settings.admin_key,
            settings.master_key,
            live.master_key.encoded(),
            *declared,
            *live.env.stored_values(),
        ]

    return secrets


def create_app(runtime: Runtime, *, manage_runtime: bool = True, system: SystemProbe | None = None) -> FastAPI:
    """Build the app; with `manage_runtime` its lifespan starts and stops the runtime's refreshers, and `system`
    reports the cluster on the console's System page."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Loading the tokenizer takes ~0.3 s of CPU: do it now, off the loop, not when a stream first ends early.
        await asyncio.to_thread(count_tokens, "warm up")
        if manage_runtime:
            await runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                await runtime.stop()

    app = FastAPI(title="Downcity", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.state.runtime = runtime
    source = _secrets_of(runtime)
    SCRUBBER.add_source(source)
    weakref.finalize(runtime, SCRUBBER.remove_source, source)
    install_log_scrubbing()
    install_error_handlers(app)
    for module in (public, ai, images, balance, cities, tokens, env, usage, jobs, quotas):
        app.include_router(module.router)
    install_console(app, runtime, system)
    # Added last runs first: the size cap, then the edge rule, then the routes.
    app.add_middleware(EdgeRules)
    app.add_middleware(BodySizeLimit, max_bytes=runtime.settings.max_body_bytes)
    return app
