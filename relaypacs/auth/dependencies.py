"""FastAPI dependencies: the authenticated user and role checks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import bindparam, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from relaypacs.auth.errors import PasswordChangeRequired, SessionEnded, TotpEnrolmentRequired
from relaypacs.auth.models import Role, User
from relaypacs.auth.revocation import Revocations
from relaypacs.auth.security import AccessClaims, decode_access_token
from relaypacs.config import Settings
from relaypacs.db import Database, column_processor, read_in_one_call, readonly_engine
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
    cached: User | None = getattr(request.state, "user", None)
    if cached is not None:
        return cached
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated()
    state = get_app_state(request)
    claims = decode_access_token(credentials.credentials, key=state.signing_key)
    user = await load_user(state.db, claims.user_id, state.user_rows)
    if user is None or not user.is_active:
        raise NotAuthenticated("The account is disabled or no longer exists.")
    revocations: Revocations = state.revocations
    if claims.version != user.token_version or await revocations.is_revoked(claims.session_id):
        raise SessionEnded()
    request.state.user_id = user.id
    request.state.user = user
    request.state.access_claims = claims
    return user


SessionUser = Annotated[User, Depends(get_session_user)]


def totp_required(settings: Settings, user: User) -> bool:
    return user.role.value in settings.totp_required_roles


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


async def load_user(db: Database, user_id: uuid.UUID, rows: UserRows | None = None) -> User | None:
    """The user row, detached. A short read of its own (see read_in_one_call): the connection
    goes back to the pool at once instead of being held for the whole request, and on SQLite it
    is one thread call (this runs for every request), made cheaper by UserRows."""
    if rows is not None:
        return await asyncio.to_thread(rows.load, user_id)
    return await read_in_one_call(db, lambda session: session.get(User, user_id))


class UserRows:
    """The user of every request on SQLite, read with one plain SQL statement.

    Loading the row through the ORM (a session, a transaction, the identity map) costs about
    0.4 ms of Python per request; the chunk PUT of a 512 KB instance costs about 4 ms in all.
    Here every call still reads the user's whole row from the database, so any change to it,
    by any process, is seen at once; only when the row is identical, column for column, to the
    one a User object was built from is that object returned again (it is never written to:
    writers load their own). A changed or new row is loaded through the ORM, in the same
    snapshot as its raw copy."""

    def __init__(self, engine: Engine, capacity: int = 1024) -> None:
        table = User.__table__
        self._engine = engine
        self._sql = str(select(table).where(table.c.id == bindparam("id")).compile(engine))
        self._bind = column_processor(table.c.id.type.bind_processor(engine.dialect))
        self._capacity = capacity
        self._known: dict[uuid.UUID, tuple[tuple[Any, ...], User]] = {}
        self._reader = readonly_engine(engine)

    def load(self, user_id: uuid.UUID) -> User | None:
        """The user (None: no such row). Blocking: call it in a thread."""
        params = (self._bind(user_id),)
        known = self._known.get(user_id)
        if known is not None:
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                row = cursor.execute(self._sql, params).fetchone()
                cursor.close()
            finally:
                connection.close()
            if row is not None and tuple(row) == known[0]:
                return known[1]
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            raw = session.connection().exec_driver_sql(self._sql, params).first()
            user = session.get(User, user_id)
        if raw is None or user is None:
            self._known.pop(user_id, None)
            return None
        if len(self._known) >= self._capacity:
            self._known.clear()
        self._known[user_id] = (tuple(raw), user)
        return user


CurrentUser = Annotated[User, Depends(get_current_user)]


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
