"""Admin routes issuing and revoking user tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from downcity.errors import invalid
from downcity.http.deps import AdminDep, RuntimeDep

router = APIRouter(prefix="/v1/tokens")


class TokenApply(BaseModel):
    """Body of `/v1/tokens/apply`; metadata and ttl are checked by the issuer."""

    city_id: str = Field(min_length=1)
    user_id: str = Field(min_length=1)
    metadata: Any = None
    ttl: Any = None


class TokenRevoke(BaseModel):
    """Body of `/v1/tokens/revoke`: a token id, or a user (optionally within one city)."""

    token_id: str | None = None
    user_id: str | None = None
    city_id: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> TokenRevoke:
        if (self.token_id is None) == (self.user_id is None):
            raise invalid("give exactly one of 'token_id' or 'user_id'", "token_id")
        return self


@router.post("/apply")
async def apply_token(body: TokenApply, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Issue a user token for an active city."""
    issued = await runtime.security.issuer.apply(body.city_id, body.user_id, body.metadata, body.ttl)
    return issued.model_dump()


@router.post("/revoke")
async def revoke_token(body: TokenRevoke, runtime: RuntimeDep, _: AdminDep) -> dict[str, Any]:
    """Revoke one token, or every token a user holds."""
    revocations = runtime.security.revocations
    if body.token_id is not None:
        await revocations.revoke_token(body.token_id)
        revoked = 1
    else:
        assert body.user_id is not None
        revoked = await revocations.revoke_user(body.user_id, body.city_id)
    await runtime.security.revocation_cache.refresh()
    return {"revoked": revoked}
