"""Password hashing (argon2id) and access tokens (JWT, HS256, audience/issuer/type checked)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relaypacs.auth.models import Role
from relaypacs.errors import NotAuthenticated

ISSUER = "relaypacs"
AUDIENCE = "relaypacs-api"
ALGORITHM = "HS256"  # the only one accepted: no "none", no RS/HS confusion
ACCESS = "access"

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile defaults

# Verifying against this keeps a login for an unknown user as slow as for a known one.
_DUMMY_HASH = _hasher.hash("relaypacs-timing-equaliser")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: Role
    token_id: str
    expires_at: dt.datetime


def create_access_token(
    *, user_id: uuid.UUID, role: Role, key: str, lifetime: dt.timedelta
) -> tuple[str, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    expires = now + lifetime
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(user_id),
        "role": role.value,
        "typ": ACCESS,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": expires,
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM), expires


def decode_access_token(token: str, *, key: str) -> AccessClaims:
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            options={"require": ["exp", "nbf", "iat", "sub", "iss", "aud", "jti"]},
            leeway=5,
        )
        if claims.get("typ") != ACCESS:
            raise NotAuthenticated("This token is not an access token.")
        return AccessClaims(
            user_id=uuid.UUID(claims["sub"]),
            role=Role(claims["role"]),
            token_id=str(claims["jti"]),
            expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
        )
    except jwt.ExpiredSignatureError:
        raise NotAuthenticated("The access token has expired.") from None
    except (jwt.InvalidTokenError, ValueError, KeyError):
        raise NotAuthenticated("The access token is not valid.") from None
