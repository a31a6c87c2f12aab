"""Console sessions: a signed, expiring cookie naming a session id, and CSRF tokens bound to it.

The cookie holds no credential: only a random session id, its expiry and an HMAC under a key derived from the
master key, which every ingress replica loads. Signing out revokes the session id through the token revocation
store, so every replica refuses the cookie within its revocation refresh (~1 s), not only the browser that held it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from downcity.runtime import Security
from downcity.secrets import MasterKey
from downcity.store.database import now_ms

SESSION_COOKIE = "dc_console"
SIGN_IN_COOKIE = "dc_console_signin"
SESSION_TTL_S = 8 * 3600
SIGN_IN_TTL_S = 600
# Revoked session ids share the token revocation table; the prefix keeps them apart from token ids.
REVOCATION_PREFIX = "console-"
_VERSION = "v1"


@dataclass(frozen=True)
class Session:
    """A verified console session."""

    session_id: str
    issued_ms: int
    expires_ms: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class SessionSigner:
    """Issues and verifies console cookies and CSRF tokens under a key derived from the master key."""

    def __init__(self, master_key: MasterKey, security: Security) -> None:
        self._security = security
        material = b"downcity console session\x00" + master_key.encoded().encode()
        self._key = hashlib.sha256(material).digest()

    def _mac(self, *parts: str) -> str:
        return _b64(hmac.new(self._key, "\x00".join(parts).encode(), hashlib.sha256).digest())

    def issue(self) -> tuple[str, Session]:
        """A fresh session and its cookie value."""
        issued = now_ms()
        session = Session(secrets.token_urlsafe(16), issued, issued + SESSION_TTL_S * 1000)
        body = f"{_VERSION}.{session.session_id}.{session.issued_ms}.{session.expires_ms}"
        return f"{body}.{self._mac('session', body)}", session

    def verify(self, cookie: str | None) -> Session | None:
        """The session a cookie names when it is signed here, unexpired and not signed out; else None."""
        if not cookie:
            return None
        body, _, mac = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not hmac.compare_digest(mac, self._mac("session", body)):
            return None
        session_id, issued, expires = parts[1], parts[2], parts[3]
        if not (issued.isdigit() and expires.isdigit()) or int(expires) <= now_ms():
            return None
        revocations = self._security.revocation_cache
        if revocations.is_revoked(REVOCATION_PREFIX + session_id, "", "", int(issued)):
            return None
        return Session(session_id, int(issued), int(expires))

    async def sign_out(self, session: Session) -> None:
        """Revoke the session on every replica."""
        await self._security.revocations.revoke_token(REVOCATION_PREFIX + session.session_id)
        await self._security.revocation_cache.refresh()

    def csrf(self, session_id: str) -> str:
        """The CSRF token every form of this session carries."""
        return self._mac("csrf", session_id)

    def check_csrf(self, session_id: str, presented: str | None) -> bool:
        """Whether a form's CSRF token belongs to this session."""
        return bool(presented) and hmac.compare_digest(str(presented), self.csrf(session_id))

    @staticmethod
    def sign_in_nonce() -> str:
        """A fresh nonce for the sign-in form's cookie (there is no session yet to bind its CSRF token to)."""
        return secrets.token_urlsafe(16)
