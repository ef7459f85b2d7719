"""User administration endpoints (administrators only). Successes are audited by the service
in the same transaction; refusals (unknown user, own account, weak password) are audited
here, in a transaction of their own, with their error code."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Query, Request, status
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth.dependencies import AdminUser
from relaypacs.auth.errors import WeakPassword
from relaypacs.auth.models import AuthSession, User
from relaypacs.auth.repository import live_sessions
from relaypacs.auth.schemas import SessionRead
from relaypacs.auth.service import check_new_password
from relaypacs.auth.sessions import TokenContext
from relaypacs.errors import GatewayError
from relaypacs.state import ReadSessionDep, get_app_state
from relaypacs.users import service
from relaypacs.users.schemas import (
    AdminUserList,
    AdminUserRead,
    RoleChange,
    TemporaryPassword,
    UserCreate,
    UserCreated,
)

router = APIRouter(prefix="/admin/users", tags=["admin"])

T = TypeVar("T")


def _ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def _audited(
    request: Request,
    admin: User,
    action: str,
    user_id: uuid.UUID | None,
    work: Callable[[AsyncSession], Awaitable[T]],
) -> T:
    """Run `work` in a transaction; if it is refused, record the refusal and re-raise."""
    state = get_app_state(request)
    try:
        async with state.db.sessionmaker() as session, session.begin():
            return await work(session)
    except GatewayError as exc:
        async with state.db.sessionmaker() as session, session.begin():
            await record_event(
                session,
                action=action,
                outcome="failure",
                actor_id=admin.id,
                actor_role=admin.role.value,
                object_type="user",
                object_id=user_id,
                client_ip=_ip(request),
                details={"reason": exc.code},
            )
        raise


def _checked_password(password: str) -> str:
    try:
        check_new_password(password)
    except ValueError as exc:
        raise WeakPassword(str(exc).capitalize() + ".") from None
    return password


@router.get("", response_model=AdminUserList)
async def list_users(
    _admin: AdminUser,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AdminUserList:
    total = await session.scalar(select(func.count()).select_from(User))
    users = await session.scalars(select(User).order_by(User.username).limit(limit).offset(offset))
    return AdminUserList(items=[AdminUserRead.model_validate(u) for u in users], total=total or 0)


@router.get("/{user_id}", response_model=AdminUserRead)
async def get_user(user_id: uuid.UUID, _admin: AdminUser, session: ReadSessionDep) -> User:
    return await service.get_user(session, user_id)


@router.post("", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserCreate, request: Request, admin: AdminUser) -> UserCreated:
    """The user must change the temporary password at first login (until then their tokens
    only allow POST /auth/password)."""
    generated = body.temporary_password is None
    password = service.generate_temporary_password() if generated else body.temporary_password
    assert password is not None

    async def work(session: AsyncSession) -> UserCreated:
        user = await service.admin_create_user(
            session,
            admin=admin,
            username=body.username,
            role=body.role,
            email=body.email,
            temporary_password=_checked_password(password),
            client_ip=_ip(request),
        )
        view = AdminUserRead.model_validate(user).model_dump()
        return UserCreated(**view, temporary_password=password if generated else None)

    return await _audited(request, admin, "admin.user_create", None, work)


@router.post("/{user_id}/disable", response_model=AdminUserRead)
async def disable_user(user_id: uuid.UUID, request: Request, admin: AdminUser) -> User:
    """Ends all of the user's sessions at once."""
    return await _audited(
        request,
        admin,
        "admin.user_disable",
        user_id,
        lambda s: service.set_active(
            s, admin=admin, user_id=user_id, active=False, client_ip=_ip(request)
        ),
    )


@router.post("/{user_id}/enable", response_model=AdminUserRead)
async def enable_user(user_id: uuid.UUID, request: Request, admin: AdminUser) -> User:
    return await _audited(
        request,
        admin,
        "admin.user_enable",
        user_id,
        lambda s: service.set_active(
            s, admin=admin, user_id=user_id, active=True, client_ip=_ip(request)
        ),
    )


@router.put("/{user_id}/role", response_model=AdminUserRead)
async def change_role(
    user_id: uuid.UUID, body: RoleChange, request: Request, admin: AdminUser
) -> User:
    """Ends the user's sessions: the new role applies from their next login."""
    return await _audited(
        request,
        admin,
        "admin.user_role",
        user_id,
        lambda s: service.change_role(
            s, admin=admin, user_id=user_id, role=body.role, client_ip=_ip(request)
        ),
    )


@router.delete("/{user_id}/totp", response_model=AdminUserRead)
async def reset_totp(user_id: uuid.UUID, request: Request, admin: AdminUser) -> User:
    """Removes the user's TOTP secret and recovery codes and ends their sessions."""
    return await _audited(
        request,
        admin,
        "admin.user_totp_reset",
        user_id,
        lambda s: service.reset_totp(s, admin=admin, user_id=user_id, client_ip=_ip(request)),
    )


@router.post("/{user_id}/password", response_model=UserCreated)
async def set_temporary_password(
    user_id: uuid.UUID, body: TemporaryPassword, request: Request, admin: AdminUser
) -> UserCreated:
    """A temporary password the user must change at next login; their sessions end."""
    generated = body.temporary_password is None
    password = service.generate_temporary_password() if generated else body.temporary_password
    assert password is not None

    async def work(session: AsyncSession) -> UserCreated:
        user = await service.set_temporary_password(
            session,
            admin=admin,
            user_id=user_id,
            password=_checked_password(password),
            client_ip=_ip(request),
        )
        view = AdminUserRead.model_validate(user).model_dump()
        return UserCreated(**view, temporary_password=password if generated else None)

    return await _audited(request, admin, "admin.user_password_reset", user_id, work)


@router.get("/{user_id}/sessions", response_model=list[SessionRead])
async def list_sessions(
    user_id: uuid.UUID, _admin: AdminUser, session: ReadSessionDep
) -> list[AuthSession]:
    await service.get_user(session, user_id)
    return await live_sessions(session, user_id=user_id)


@router.delete("/{user_id}/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_session(
    user_id: uuid.UUID, session_id: uuid.UUID, request: Request, admin: AdminUser
) -> None:
    ctx: TokenContext = get_app_state(request).token_context
    await _audited(
        request,
        admin,
        "admin.session_revoke",
        user_id,
        lambda s: service.revoke_user_session(
            s, ctx, admin=admin, user_id=user_id, session_id=session_id, client_ip=_ip(request)
        ),
    )


@router.delete("/{user_id}/sessions", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_all_sessions(user_id: uuid.UUID, request: Request, admin: AdminUser) -> None:
    await _audited(
        request,
        admin,
        "admin.session_revoke_all",
        user_id,
        lambda s: service.revoke_user_sessions(
            s, admin=admin, user_id=user_id, client_ip=_ip(request)
        ),
    )
