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

# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~50 ms per hash on a
# 2-core box, where argon2-cffi's default profile (64 MiB, 3 passes, 4 lanes) takes ~500 ms and
# would let a few parallel logins starve the server. Old hashes keep verifying (the parameters
# are in each hash); check_needs_rehash() allows upgrading them at login.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

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
