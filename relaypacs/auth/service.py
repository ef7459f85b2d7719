"""Users and logins."""

from __future__ import annotations

import asyncio
import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.service import record_event
from relaypacs.auth.models import Role, User
from relaypacs.auth.security import hash_password, verify_password
from relaypacs.errors import Conflict

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 12


class UsernameTaken(Conflict):
    code = "username_taken"
    message = "That username is already taken."


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


async def create_user(
    session: AsyncSession,
    *,
    username: str,
    password: str,
    role: Role,
    email: str | None = None,
    must_change_password: bool = False,
) -> User:
    if not USERNAME_RE.match(username):
        raise ValueError("the username may use letters, digits and . _ @ - (at most 64)")
    check_new_password(password)
    password_hash = await asyncio.to_thread(hash_password, password)
    user = User(
        username=username,
        password_hash=password_hash,
        role=role,
        email=email,
        must_change_password=must_change_password,
    )
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise UsernameTaken() from None
    await record_event(
        session,
        action="user.create",
        object_type="user",
        object_id=user.id,
        details={"role": role.value},
    )
    return user


async def authenticate(
    session: AsyncSession, *, username: str, password: str, client_ip: str | None
) -> User | None:
    """The user for these credentials, or None. Both outcomes are audited in `session`."""
    user = await session.scalar(select(User).where(User.username == username))
    ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        await record_event(
            session,
            action="auth.login",
            outcome="failure",
            actor_id=user.id if user else None,
            client_ip=client_ip,
            details={"reason": "inactive" if user and ok else "bad_credentials"},
        )
        return None
    await record_event(
        session,
        action="auth.login",
        actor_id=user.id,
        actor_role=user.role.value,
        client_ip=client_ip,
    )
    return user


async def ensure_first_admin(sessionmaker: async_sessionmaker[AsyncSession]) -> str | None:
    """On the very first start, create `admin` with a random password and return the password.

    Returns None when any user exists already. Safe when several replicas start at once: only
    one insert wins, the others see the unique constraint and return None.
    """
    async with sessionmaker() as session:
        async with session.begin():
            if await session.scalar(select(func.count()).select_from(User)):
                return None
        password = secrets.token_urlsafe(18)
        try:
            async with session.begin():
                await create_user(session, username="admin", password=password, role=Role.ADMIN)
        except UsernameTaken:
            return None
        return password
