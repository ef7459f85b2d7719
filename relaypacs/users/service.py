"""User administration rules. Every change is audited with the administrator, the user's id
and the outcome; changes that alter what a user may do end their sessions at once."""

from __future__ import annotations

import secrets
import uuid

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth.models import AuthSession, RecoveryCode, Role, User
from relaypacs.auth.service import change_password, create_user
from relaypacs.auth.sessions import TokenContext, revoke_all_sessions, revoke_sessions
from relaypacs.errors import Conflict, NotFound


class UserNotFound(NotFound):
    code = "user_not_found"
    message = "No such user."


class SessionNotFound(NotFound):
    code = "session_not_found"
    message = "No such session."


class CannotChangeSelf(Conflict):
    code = "cannot_change_own_account"
    message = "Administrators cannot disable themselves or change their own role."


def generate_temporary_password() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, 96 bits


async def get_user(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User:
    user = await session.get(User, user_id, with_for_update=lock)
    if user is None:
        raise UserNotFound()
    return user


async def _audit(
    session: AsyncSession,
    *,
    action: str,
    admin: User,
    user_id: uuid.UUID,
    client_ip: str | None,
    details: dict[str, object] | None = None,
) -> None:
    await record_event(
        session,
        action=action,
        actor_id=admin.id,
        actor_role=admin.role.value,
        object_type="user",
        object_id=user_id,
        client_ip=client_ip,
        details=details,
    )


async def admin_create_user(
    session: AsyncSession,
    *,
    admin: User,
    username: str,
    role: Role,
    email: str | None,
    temporary_password: str,
    client_ip: str | None,
) -> User:
    user = await create_user(
        session,
        username=username,
        password=temporary_password,
        role=role,
        email=email,
        must_change_password=True,
        audit=False,  # the record is admin.user_create, with the administrator
    )
    await _audit(
        session,
        action="admin.user_create",
        admin=admin,
        user_id=user.id,
        client_ip=client_ip,
        details={"role": role.value},
    )
    return user


async def set_active(
    session: AsyncSession, *, admin: User, user_id: uuid.UUID, active: bool, client_ip: str | None
) -> User:
    if user_id == admin.id:
        raise CannotChangeSelf()
    user = await get_user(session, user_id, lock=True)
    user.is_active = active
    ended = 0
    if not active:
        ended = await revoke_all_sessions(session, user=user, reason="disabled")
    await _audit(
        session,
        action="admin.user_enable" if active else "admin.user_disable",
        admin=admin,
        user_id=user_id,
        client_ip=client_ip,
        details={"sessions_ended": ended} if not active else None,
    )
    return user


async def change_role(
    session: AsyncSession, *, admin: User, user_id: uuid.UUID, role: Role, client_ip: str | None
) -> User:
    if user_id == admin.id:
        raise CannotChangeSelf()
    user = await get_user(session, user_id, lock=True)
    previous = user.role
    user.role = role
    # The new role applies from the next login: every current token ends now.
    ended = await revoke_all_sessions(session, user=user, reason="role_change")
    await _audit(
        session,
        action="admin.user_role",
        admin=admin,
        user_id=user_id,
        client_ip=client_ip,
        details={"from": previous.value, "to": role.value, "sessions_ended": ended},
    )
    return user


async def reset_totp(
    session: AsyncSession, *, admin: User, user_id: uuid.UUID, client_ip: str | None
) -> User:
    user = await get_user(session, user_id, lock=True)
    user.totp_secret = None
    user.totp_enabled = False
    user.totp_last_step = None
    await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    ended = await revoke_all_sessions(session, user=user, reason="totp_reset")
    await _audit(
        session,
        action="admin.user_totp_reset",
        admin=admin,
        user_id=user_id,
        client_ip=client_ip,
        details={"sessions_ended": ended},
    )
    return user


async def set_temporary_password(
    session: AsyncSession,
    *,
    admin: User,
    user_id: uuid.UUID,
    password: str,
    client_ip: str | None,
) -> User:
    user = await get_user(session, user_id, lock=True)
    await change_password(session, user=user, new_password=password, temporary=True)
    ended = await revoke_all_sessions(session, user=user, reason="password_reset")
    await _audit(
        session,
        action="admin.user_password_reset",
        admin=admin,
        user_id=user_id,
        client_ip=client_ip,
        details={"sessions_ended": ended},
    )
    return user


async def revoke_user_session(
    session: AsyncSession,
    ctx: TokenContext,
    *,
    admin: User,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    client_ip: str | None,
) -> None:
    await get_user(session, user_id)
    auth_session = await session.get(AuthSession, session_id, with_for_update=True)
    if auth_session is None or auth_session.user_id != user_id:
        raise SessionNotFound()
    await revoke_sessions(session, ctx, [auth_session], reason="admin_revoke")
    await _audit(
        session,
        action="admin.session_revoke",
        admin=admin,
        user_id=user_id,
        client_ip=client_ip,
        details={"session_id": str(session_id)},
    )


async def revoke_user_sessions(
    session: AsyncSession, *, admin: User, user_id: uuid.UUID, client_ip: str | None
) -> int:
    user = await get_user(session, user_id, lock=True)
    ended = await revoke_all_sessions(session, user=user, reason="admin_revoke")
    await _audit(
        session,
        action="admin.session_revoke_all",
        admin=admin,
        user_id=user_id,
        client_ip=client_ip,
        details={"sessions_ended": ended},
    )
    return ended
