"""Password hashing (argon2id), access and MFA-pending tokens (JWT, HS256, audience/issuer/type
checked) and refresh tokens (random, stored as their SHA-256).

Signing keys rotate: tokens are signed with the current key and name it in their header (`kid`,
a digest of the key, never the key); tokens signed with a previous key (configured beside the
current one) are still accepted until they expire. A token naming no key (issued before kids
existed) is checked against each configured key; a token naming an unknown key is refused."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from relaypacs.auth.models import Role
from relaypacs.errors import NotAuthenticated

ISSUER = "relaypacs"
AUDIENCE = "relaypacs-api"
ALGORITHM = "HS256"  # the only one accepted: no "none", no RS/HS confusion
_LEEWAY_SECONDS = 5  # clock skew allowed on exp and nbf
ACCESS = "access"
# After the password, before the TOTP code: accepted by POST /auth/totp only.
MFA_PENDING = "mfa_pending"
# A one-time ticket that opens one event stream (a browser's EventSource sends no header).
STREAM_TICKET = "stream_ticket"

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


def key_id(key: str) -> str:
    """The `kid` of a signing key: 16 hex digits of a digest of it (the key is at least 32
    characters: nothing about it can be learnt from this)."""
    return hashlib.sha256(b"relaypacs-token-key-id:" + key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KeyRing:
    """The token signing keys: `current` signs, `current` and `previous` verify."""

    current: str
    previous: tuple[str, ...] = ()
    _by_id: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = {key_id(key): key for key in reversed((self.current, *self.previous))}
        object.__setattr__(self, "_by_id", keys)

    @property
    def current_id(self) -> str:
        return key_id(self.current)

    @property
    def ids(self) -> tuple[str, ...]:
        """Which keys verify (the verified-token cache's part of the key)."""
        return tuple(self._by_id)

    def by_id(self, kid: str) -> str | None:
        return self._by_id.get(kid)

    def all(self) -> tuple[str, ...]:
        return (self.current, *(k for k in self.previous if k != self.current))


SigningKey = str | KeyRing  # a plain string: a ring of that one key


@functools.lru_cache(maxsize=64)
def _ring_of(key: str) -> KeyRing:
    return KeyRing(key)


def _ring(key: SigningKey) -> KeyRing:
    return key if isinstance(key, KeyRing) else _ring_of(key)


@dataclass(frozen=True)
class AccessClaims:
    user_id: uuid.UUID
    role: Role
    token_id: str
    session_id: uuid.UUID
    # The user's token_version when the token was issued: a higher one in the row kills it.
    version: int
    expires_at: dt.datetime
    not_before: float = 0.0  # POSIX time


@dataclass(frozen=True)
class MfaClaims:
    user_id: uuid.UUID
    version: int


def create_access_token(
    *,
    user_id: uuid.UUID,
    role: Role,
    session_id: uuid.UUID,
    version: int,
    key: SigningKey,
    lifetime: dt.timedelta,
) -> tuple[str, dt.datetime]:
    return _encode(
        {"sub": str(user_id), "role": role.value, "sid": str(session_id), "ver": version},
        typ=ACCESS,
        key=key,
        lifetime=lifetime,
    )


def create_mfa_token(
    *, user_id: uuid.UUID, version: int, key: SigningKey, lifetime: dt.timedelta
) -> tuple[str, dt.datetime]:
    return _encode(
        {"sub": str(user_id), "ver": version}, typ=MFA_PENDING, key=key, lifetime=lifetime
    )


def _encode(
    claims: dict[str, object], *, typ: str, key: SigningKey, lifetime: dt.timedelta
) -> tuple[str, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    expires = now + lifetime
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "typ": typ,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": expires,
        **claims,
    }
    ring = _ring(key)
    token = jwt.encode(payload, ring.current, algorithm=ALGORITHM, headers={"kid": ring.current_id})
    return token, expires


_MALFORMED = object()


def _header_kid(token: str) -> object:
    """The `kid` of the token's header (None: none), read with the standard library: PyJWT's
    own reading checks every character in Python, and jwt.decode does that once anyway."""
    try:
        segment = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):  # binascii.Error, JSONDecodeError, Unicode errors
        return _MALFORMED
    return header.get("kid") if isinstance(header, dict) else _MALFORMED


def _candidate_keys(token: str, ring: KeyRing) -> tuple[str, ...]:
    """The keys that may have signed the token: the one its `kid` names, or (no kid: a token
    from before key ids) every configured key; none for an unknown kid."""
    kid = _header_kid(token)
    if kid is _MALFORMED:
        return ()
    if kid is None:
        return ring.all()
    if not isinstance(kid, str):
        return ()
    key = ring.by_id(kid)
    return (key,) if key is not None else ()


def _decode(token: str, *, key: SigningKey, typ: str, required: list[str]) -> dict[str, object]:
    what = {ACCESS: "access token", STREAM_TICKET: "stream ticket"}.get(typ, "sign-in token")
    claims: dict[str, object] | None = None
    try:
        for candidate in _candidate_keys(token, _ring(key)):
            try:
                claims = jwt.decode(
                    token,
                    candidate,
                    algorithms=[ALGORITHM],
                    audience=AUDIENCE,
                    issuer=ISSUER,
                    options={
                        "require": ["exp", "nbf", "iat", "sub", "iss", "aud", "jti", *required],
                        # checked below, on this module's clock: the same one as the cache's
                        "verify_exp": False,
                        "verify_nbf": False,
                    },
                )
                break
            except jwt.InvalidSignatureError:
                continue  # (no kid) signed with another of the keys, or forged
    except jwt.InvalidTokenError:
        raise NotAuthenticated(f"The {what} is not valid.") from None
    if claims is None:
        raise NotAuthenticated(f"The {what} is not valid.")
    if claims.get("typ") != typ:
        raise NotAuthenticated(f"This token is not an {what}.")
    _check_time(claims, what)
    return claims


def _check_time(claims: dict[str, object], what: str) -> None:
    expires, not_before = claims.get("exp"), claims.get("nbf")
    if not isinstance(expires, int | float) or not isinstance(not_before, int | float):
        raise NotAuthenticated(f"The {what} is not valid.")
    now = time.time()
    if now > expires + _LEEWAY_SECONDS:
        raise NotAuthenticated(f"The {what} has expired.")
    if now < not_before - _LEEWAY_SECONDS:
        raise NotAuthenticated(f"The {what} is not valid yet.")


# Verified access tokens, by (token, the keys that verify): a client sends the same token with
# every request (hundreds of chunk PUTs a second), and checking its signature and claims again
# was a good part of a chunk's cost. Only a token that passed every check is kept; its time
# limits are checked again on every use; any other string, a tampered one included, is a miss
# and fully checked.
_VERIFIED_MAX = 4096
_verified: OrderedDict[tuple[str, tuple[str, ...]], tuple[AccessClaims, float, float]] = (
    OrderedDict()
)


def decode_access_token(token: str, *, key: SigningKey) -> AccessClaims:
    ring = _ring(key)
    cache_key = (token, ring.ids)
    cached = _verified.get(cache_key)
    if cached is not None:
        claims_seen, not_before, expires = cached
        now = time.time()
        if not_before - _LEEWAY_SECONDS <= now <= expires + _LEEWAY_SECONDS:
            return claims_seen
        del _verified[cache_key]  # out of its time: the full check says why
    access = _decode_access_token(token, key=ring)
    _verified[cache_key] = (access, access.not_before, access.expires_at.timestamp())
    if len(_verified) > _VERIFIED_MAX:
        _verified.popitem(last=False)
    return access


def _decode_access_token(token: str, *, key: SigningKey) -> AccessClaims:
    claims = _decode(token, key=key, typ=ACCESS, required=["sid", "ver", "role"])
    try:
        version = claims["ver"]
        expires = claims["exp"]
        not_before = claims["nbf"]
        if (
            not isinstance(version, int)
            or not isinstance(expires, int | float)
            or not isinstance(not_before, int | float)
        ):
            raise ValueError("bad claim type")
        return AccessClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            role=Role(str(claims["role"])),
            token_id=str(claims["jti"]),
            session_id=uuid.UUID(str(claims["sid"])),
            version=version,
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
            not_before=float(not_before),
        )
    except (ValueError, KeyError):
        raise NotAuthenticated("The access token is not valid.") from None


def decode_mfa_token(token: str, *, key: SigningKey) -> MfaClaims:
    claims = _decode(token, key=key, typ=MFA_PENDING, required=["ver"])
    try:
        version = claims["ver"]
        if not isinstance(version, int):
            raise ValueError("bad claim type")
        return MfaClaims(user_id=uuid.UUID(str(claims["sub"])), version=version)
    except (ValueError, KeyError):
        raise NotAuthenticated("The sign-in token is not valid.") from None


def new_refresh_token() -> str:
    """256 random bits: a guess is hopeless, so an unsalted SHA-256 is enough to store it."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TicketClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    version: int
    ticket_id: str  # used once
    expires_at: dt.datetime


def create_stream_ticket(
    *, access: AccessClaims, key: SigningKey, lifetime: dt.timedelta
) -> tuple[str, dt.datetime]:
    """A short-lived ticket for the access token's user and session: it opens one event
    stream, where a browser cannot send the access token in a header (never put that in a
    URL: URLs are logged)."""
    return _encode(
        {"sub": str(access.user_id), "sid": str(access.session_id), "ver": access.version},
        typ=STREAM_TICKET,
        key=key,
        lifetime=lifetime,
    )


def decode_stream_ticket(token: str, *, key: SigningKey) -> TicketClaims:
    claims = _decode(token, key=key, typ=STREAM_TICKET, required=["sid", "ver"])
    try:
        version, expires = claims["ver"], claims["exp"]
        if not isinstance(version, int) or not isinstance(expires, int | float):
            raise ValueError("bad claim type")
        return TicketClaims(
            user_id=uuid.UUID(str(claims["sub"])),
            session_id=uuid.UUID(str(claims["sid"])),
            version=version,
            ticket_id=str(claims["jti"]),
            expires_at=dt.datetime.fromtimestamp(expires, dt.UTC),
        )
    except (ValueError, KeyError):
        raise NotAuthenticated("The stream ticket is not valid.") from None
