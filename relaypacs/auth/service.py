"""Users and logins."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.service import record_event
from relaypacs.auth.errors import WeakPassword
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
    audit: bool = True,
) -> User:
    """A new user; recorded as ``user.create`` (without an actor: the command line, the first
    start) unless ``audit`` is False, for a caller that records the action itself with its
    actor (an administrator's ``admin.user_create``: one record per action)."""
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
    if not audit:
        return user
    await record_event(
        session,
        action="user.create",
        object_type="user",
        object_id=user.id,
        details={"role": role.value},
    )
    return user


@dataclass(frozen=True)
class PasswordCheck:
    user: User | None
    # None when the password is right and the account active; else a reason code for the
    # audit record ("bad_credentials" whether the user exists or not, "inactive").
    failure: str | None


async def check_password(
    read_sessionmaker: async_sessionmaker[AsyncSession], *, username: str, password: str
) -> PasswordCheck:
    """Outside any writing transaction: the hash takes ~50 ms and must not hold the (SQLite)
    write lock. Unknown users cost the same time as known ones."""
    async with read_sessionmaker() as session, session.begin():
        user = await session.scalar(select(User).where(User.username == username))
    ok = await asyncio.to_thread(verify_password, user.password_hash if user else None, password)
    if user is None or not ok:
        return PasswordCheck(user, "bad_credentials")
    if not user.is_active:
        return PasswordCheck(user, "inactive")
    return PasswordCheck(user, None)


async def change_password(
    session: AsyncSession, *, user: User, new_password: str, temporary: bool
) -> None:
    """Set a new password (hash it first); `temporary` ones must be changed at next login."""
    try:
        check_new_password(new_password)
    except ValueError as exc:
        raise WeakPassword(str(exc).capitalize() + ".") from None
    user.password_hash = await asyncio.to_thread(hash_password, new_password)
    user.must_change_password = temporary
    await session.flush()


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
