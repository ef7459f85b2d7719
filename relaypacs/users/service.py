"""User administration rules. Every change is audited with the administrator, the user's id and
the outcome, in the change's own transaction; a refused change (unknown user, own account, weak
password) is audited too, in a transaction of its own, with its error code. Changes that alter
what a user may do end their sessions at once.

The users are the auth domain's: this reaches them through relaypacs.auth.repository,
relaypacs.auth.service and relaypacs.auth.sessions (it has no tables of its own)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_event
from relaypacs.auth import repository as auth_repository
from relaypacs.auth import service as auth_service
from relaypacs.auth.models import AuthSession, Role, User
from relaypacs.auth.sessions import TokenContext, revoke_all_sessions, revoke_sessions
from relaypacs.errors import GatewayError
from relaypacs.users.errors import CannotChangeSelf, SessionNotFound, UserNotFound

T = TypeVar("T")
Sessionmaker = async_sessionmaker[AsyncSession]


def generate_temporary_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, 96 bits


async def _audited(
    sessionmaker: Sessionmaker,
    actor: Actor,
    action: str,
    user_id: uuid.UUID | None,
    work: Callable[[AsyncSession], Awaitable[T]],
) -> T:
    """Run `work` in a transaction; if it is refused, record the refusal and re-raise."""
    try:
        async with sessionmaker() as session, session.begin():
            return await work(session)
    except GatewayError as exc:
        async with sessionmaker() as session, session.begin():
            await record_event(
                session,
                actor=actor,
                action=action,
                outcome="failure",
                object_type="user",
                object_id=user_id,
                details={"reason": exc.code},
            )
        raise


async def _record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    user_id: uuid.UUID,
    details: dict[str, Any] | None = None,
) -> None:
    await record_event(
        session, actor=actor, action=action, object_type="user", object_id=user_id, details=details
    )


async def _user(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User:
    user = await auth_repository.get_user(session, user_id, lock=lock)
    if user is None:
        raise UserNotFound()
    return user


# --- reading ---------------------------------------------------------------------------------


async def list_users(session: AsyncSession, *, limit: int, offset: int) -> tuple[list[User], int]:
    """A page of the users, by username, and how many there are in all."""
    total = await auth_repository.count_users(session)
    return await auth_repository.list_users(session, limit=limit, offset=offset), total


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    return await _user(session, user_id)


async def list_user_sessions(session: AsyncSession, user_id: uuid.UUID) -> list[AuthSession]:
    await _user(session, user_id)
    return await auth_repository.live_sessions(session, user_id=user_id)


# --- changes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserWithPassword:
    user: User
    # The temporary password when the gateway generated it: shown this once.
    generated_password: str | None


async def create_user(
    sessionmaker: Sessionmaker,
    *,
    actor: Actor,
    username: str,
    role: Role,
    email: str | None,
    temporary_password: str | None,
) -> UserWithPassword:
    """A new user, who must change the temporary password (given, or generated) at first login."""
    generated = temporary_password is None
    password = generate_temporary_password() if temporary_password is None else temporary_password

    async def work(session: AsyncSession) -> User:
        user = await auth_service.create_user(
            session,
            username=username,
            password=auth_service.checked_new_password(password),
            role=role,
            email=email,
            must_change_password=True,
            audit=False,  # the record is admin.user_create, with the administrator
        )
        await _record(session, actor, "admin.user_create", user.id, {"role": role.value})
        return user

    user = await _audited(sessionmaker, actor, "admin.user_create", None, work)
    return UserWithPassword(user, password if generated else None)


async def set_active(
    sessionmaker: Sessionmaker, *, actor: Actor, user_id: uuid.UUID, active: bool
) -> User:
    """Enable or disable an account; disabling ends all of its sessions at once."""
    action = "admin.user_enable" if active else "admin.user_disable"

    async def work(session: AsyncSession) -> User:
        if user_id == actor.id:
            raise CannotChangeSelf()
        user = await _user(session, user_id, lock=True)
        user.is_active = active
        ended = 0
        if not active:
            ended = await revoke_all_sessions(session, user=user, reason="disabled")
        await _record(
            session, actor, action, user_id, {"sessions_ended": ended} if not active else None
        )
        return user

    return await _audited(sessionmaker, actor, action, user_id, work)


async def change_role(
    sessionmaker: Sessionmaker, *, actor: Actor, user_id: uuid.UUID, role: Role
) -> User:
    """The new role applies from the user's next login: every current token ends now."""

    async def work(session: AsyncSession) -> User:
        if user_id == actor.id:
            raise CannotChangeSelf()
        user = await _user(session, user_id, lock=True)
        previous = user.role
        user.role = role
        ended = await revoke_all_sessions(session, user=user, reason="role_change")
        await _record(
            session,
            actor,
            "admin.user_role",
            user_id,
            {"from": previous.value, "to": role.value, "sessions_ended": ended},
        )
        return user

    return await _audited(sessionmaker, actor, "admin.user_role", user_id, work)


async def reset_totp(sessionmaker: Sessionmaker, *, actor: Actor, user_id: uuid.UUID) -> User:
    """Remove the user's TOTP secret and recovery codes and end their sessions."""

    async def work(session: AsyncSession) -> User:
        user = await _user(session, user_id, lock=True)
        ended = await auth_service.remove_totp(session, user, reason="totp_reset")
        await _record(session, actor, "admin.user_totp_reset", user_id, {"sessions_ended": ended})
        return user

    return await _audited(sessionmaker, actor, "admin.user_totp_reset", user_id, work)


async def set_temporary_password(
    sessionmaker: Sessionmaker,
    *,
    actor: Actor,
    user_id: uuid.UUID,
    temporary_password: str | None,
) -> UserWithPassword:
    """A temporary password (given, or generated) the user must change at next login; their
    sessions end."""
    generated = temporary_password is None
    password = generate_temporary_password() if temporary_password is None else temporary_password

    async def work(session: AsyncSession) -> User:
        checked = auth_service.checked_new_password(password)
        user = await _user(session, user_id, lock=True)
        await auth_service.change_password(session, user=user, new_password=checked, temporary=True)
        ended = await revoke_all_sessions(session, user=user, reason="password_reset")
        await _record(
            session, actor, "admin.user_password_reset", user_id, {"sessions_ended": ended}
        )
        return user

    user = await _audited(sessionmaker, actor, "admin.user_password_reset", user_id, work)
    return UserWithPassword(user, password if generated else None)


async def revoke_session(
    sessionmaker: Sessionmaker,
    ctx: TokenContext,
    *,
    actor: Actor,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
) -> None:
    """End one of the user's sessions."""

    async def work(session: AsyncSession) -> None:
        await _user(session, user_id)
        auth_session = await auth_repository.get_session(session, session_id, lock=True)
        if auth_session is None or auth_session.user_id != user_id:
            raise SessionNotFound()
        await revoke_sessions(session, ctx, [auth_session], reason="admin_revoke")
        await _record(
            session, actor, "admin.session_revoke", user_id, {"session_id": str(session_id)}
        )

    await _audited(sessionmaker, actor, "admin.session_revoke", user_id, work)


async def revoke_all_user_sessions(
    sessionmaker: Sessionmaker, *, actor: Actor, user_id: uuid.UUID
) -> int:
    """End all of the user's sessions; how many there were."""

    async def work(session: AsyncSession) -> int:
        user = await _user(session, user_id, lock=True)
        ended = await revoke_all_sessions(session, user=user, reason="admin_revoke")
        await _record(
            session, actor, "admin.session_revoke_all", user_id, {"sessions_ended": ended}
        )
        return ended

    return await _audited(sessionmaker, actor, "admin.session_revoke_all", user_id, work)
