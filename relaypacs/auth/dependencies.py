"""FastAPI dependencies: the authenticated user and role checks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.auth.models import Role, User
from relaypacs.auth.security import decode_access_token
from relaypacs.errors import Forbidden, NotAuthenticated

_bearer = HTTPBearer(auto_error=False)


async def get_current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise NotAuthenticated()
    claims = decode_access_token(credentials.credentials, key=request.app.state.signing_key)
    # A short session of its own: the user is loaded and the connection goes back to the pool
    # at once, instead of being held for the whole request (a chunk upload, a verification).
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.read_sessionmaker
    async with sessionmaker() as session, session.begin():
        user = await session.get(User, claims.user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("The account is disabled or no longer exists.")
    request.state.user_id = user.id
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_roles(*roles: Role) -> Callable[[User], Awaitable[User]]:
    async def _check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise Forbidden()
        return user

    return _check


AdminUser = Annotated[User, Depends(require_roles(Role.ADMIN))]
