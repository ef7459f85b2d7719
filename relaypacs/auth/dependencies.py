"""FastAPI dependencies of the auth domain: the authenticated user, role checks, the request's
audit actor and client address, the per-user rate limit, and the auth parts of the app's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from relaypacs.audit.models import Actor
from relaypacs.audit.service import client_address
from relaypacs.auth.errors import PasswordChangeRequired, SessionEnded, TotpEnrolmentRequired
from relaypacs.auth.models import Role, User
from relaypacs.auth.revocation import Revocations
from relaypacs.auth.security import AccessClaims, decode_access_token, decode_stream_ticket
from relaypacs.auth.totp import totp_required
from relaypacs.errors import Forbidden, NotAuthenticated
from relaypacs.ratelimit import LimitName, RateLimits
from relaypacs.state import get_app_state

bearer_scheme = HTTPBearer(auto_error=False)


async def get_session_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> User:
    """The user of a valid access token whose session is live, even if the account must first
    change its password or enrol TOTP (the few endpoints that allow that use this).

    Per request: the JWT check, the user row (one read, as before) compared with the token's
    version, and one revocation lookup (a dict in embedded mode, one Redis MGET otherwise)."""
    # Once per request: the policy check (relaypacs/auth/policy.py) authenticated it first.
    # Read from the request's state dict (what `request.state` wraps): `getattr(request.state,
    # "user", None)` raised and caught an AttributeError, its message formatted, on the first
    # call of every authenticated request (~4 % of a status poll's CPU on SQLite).
    cached: User | None = request.scope.get("state", {}).get("user")
    if cached is not None:
        return cached
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated()
    state = get_app_state(request)
    claims = decode_access_token(credentials.credentials, key=state.signing_keys)
    user = await state.user_loader.load(claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("The account is disabled or no longer exists.")
    revocations: Revocations = state.revocations
    if claims.version != user.token_version or not await revocations.is_live(
        claims.session_id, user.id
    ):
        raise SessionEnded()
    request.state.user_id = user.id
    request.state.user = user
    request.state.access_claims = claims
    return user


SessionUser = Annotated[User, Depends(get_session_user)]


async def get_current_user(request: Request, user: SessionUser) -> User:
    """The user of a valid access token, with full use of their role."""
    if user.must_change_password:
        raise PasswordChangeRequired()
    if not user.totp_enabled and totp_required(get_app_state(request).settings, user):
        raise TotpEnrolmentRequired()
    return user


def access_claims(request: Request) -> AccessClaims:
    """The claims of the request's access token (after get_session_user)."""
    claims: AccessClaims = request.state.access_claims
    return claims


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_ticket_user(
    request: Request, ticket: str, *, claim_once: Callable[[str], Awaitable[bool]]
) -> User:
    """The user of a one-time stream ticket (auth.security.create_stream_ticket), with the
    checks of an access token (account active, session live, token version) and full use of
    their role; `claim_once(ticket_id)` is False for a ticket already used."""
    state = get_app_state(request)
    claims = decode_stream_ticket(ticket, key=state.signing_keys)
    user = await state.user_loader.load(claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("The account is disabled or no longer exists.")
    if claims.version != user.token_version or not await state.revocations.is_live(
        claims.session_id, user.id
    ):
        raise SessionEnded()
    if not await claim_once(claims.ticket_id):
        raise NotAuthenticated("This stream ticket was already used.")
    request.state.user_id = user.id
    request.state.user = user
    return await get_current_user(request, user)


def require_roles(*roles: Role) -> Callable[[User], Awaitable[User]]:
    """A local role check, kept as defence in depth: the policy table
    (relaypacs/auth/policy.py) is where who may call what is stated, and is checked first."""

    async def _check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise Forbidden()
        return user

    return _check


AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]


def per_user(name: LimitName) -> Callable[[Request, CurrentUser], Awaitable[None]]:
    """A route dependency: `name` counted per signed-in user."""

    async def _limit(request: Request, user: CurrentUser) -> None:
        limits: RateLimits = get_app_state(request).rate_limits
        await limits.hit(name, user.id.hex)

    return _limit


# Coroutines: FastAPI would run a plain function in a worker thread.


async def get_client_ip(request: Request) -> str | None:
    """The client's address (see relaypacs.audit.service.client_address)."""
    return client_address(request)


ClientIp = Annotated[str | None, Depends(get_client_ip)]


async def get_actor(request: Request, user: SessionUser) -> Actor:
    """The signed-in user and their address, as every audit record of this request names them."""
    return user.actor(client_address(request))


ActorDep = Annotated[Actor, Depends(get_actor)]
