"""Dependencies declared once: the runtime, the calling user, the admin."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from downcity.auth.caller import Caller
from downcity.calls.call import MAX_CALLER_TIMEOUT_MS
from downcity.calls.replays import check_client_key
from downcity.errors import bad_request
from downcity.http.principal import authenticate_admin, authenticate_user
from downcity.runtime import Runtime


async def get_runtime(request: Request) -> Runtime:
    """The runtime the app was built with (async: FastAPI would run a plain function in a thread)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_caller(
    runtime: RuntimeDep,
    authorization: Annotated[str | None, Header()] = None,
    x_city_id: Annotated[str | None, Header()] = None,
) -> Caller:
    """The verified user behind a user-token request."""
    return await authenticate_user(runtime, authorization, x_city_id)


async def require_admin(runtime: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse anything but the admin credential."""
    authenticate_admin(runtime, authorization)


CallerDep = Annotated[Caller, Depends(get_caller)]
AdminDep = Annotated[None, Depends(require_admin)]


async def get_idempotency_key(
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str | None:
    """The client's `Idempotency-Key`, checked at the edge (400 naming the header)."""
    return check_client_key(idempotency_key)


IdempotencyKeyDep = Annotated[str | None, Depends(get_idempotency_key)]


async def get_caller_timeout(
    x_downcity_timeout_ms: Annotated[str | None, Header(alias="X-Downcity-Timeout-Ms")] = None,
) -> int | None:
    """The caller's total timeout from `X-Downcity-Timeout-Ms` (it may shorten the model's, never lengthen it)."""
    if x_downcity_timeout_ms is None:
        return None
    value = x_downcity_timeout_ms.strip()
    if not value.isdigit() or not 1 <= int(value) <= MAX_CALLER_TIMEOUT_MS:
        raise bad_request(
            f"X-Downcity-Timeout-Ms must be an integer from 1 to {MAX_CALLER_TIMEOUT_MS}", "X-Downcity-Timeout-Ms"
        )
    return int(value)


CallerTimeoutDep = Annotated[int | None, Depends(get_caller_timeout)]
