"""Authentication: the admin credential, the signing key ring, user tokens, their revocation and the caller."""

from downcity.auth.admin import AdminCredential
from downcity.auth.caller import Caller
from downcity.auth.keyring import KeyRing
from downcity.auth.revocation import RevocationCache, RevocationStore
from downcity.auth.tokens import IssuedToken, TokenIssuer, TokenVerifier, UserClaims

__all__ = [
    "AdminCredential",
    "Caller",
    "IssuedToken",
    "KeyRing",
    "RevocationCache",
    "RevocationStore",
    "TokenIssuer",
    "TokenVerifier",
    "UserClaims",
]
