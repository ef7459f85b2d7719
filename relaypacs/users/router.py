"""User administration endpoints (administrators only). Each calls one function of
relaypacs/users/service.py, which audits successes and refusals alike."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from relaypacs.auth.dependencies import ActorDep, AdminUser
from relaypacs.auth.models import AuthSession, User
from relaypacs.auth.schemas import SessionRead
from relaypacs.fields import Offset
from relaypacs.state import AppStateDep, ReadSessionDep
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


def _created(result: service.UserWithPassword) -> UserCreated:
    view = AdminUserRead.model_validate(result.user).model_dump()
    return UserCreated(**view, temporary_password=result.generated_password)


@router.get("", response_model=AdminUserList)
async def list_users(
    _admin: AdminUser,
    session: ReadSessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[Offset, Query()] = 0,
) -> AdminUserList:
    users, total = await service.list_users(session, limit=limit, offset=offset)
    return AdminUserList(items=[AdminUserRead.model_validate(u) for u in users], total=total)


@router.get("/{user_id}", response_model=AdminUserRead)
async def get_user(user_id: uuid.UUID, _admin: AdminUser, session: ReadSessionDep) -> User:
    return await service.get_user(session, user_id)


@router.post("", response_model=UserCreated, status_code=status.HTTP_201_CREATED)
async def create_user(
    body: UserCreate, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> UserCreated:
    """The user must change the temporary password at first login (until then their tokens
    only allow POST /auth/password)."""
    created = await service.create_user(
        state.db.sessionmaker,
        actor=actor,
        username=body.username,
        role=body.role,
        email=body.email,
        temporary_password=body.temporary_password,
    )
    return _created(created)


@router.post("/{user_id}/disable", response_model=AdminUserRead)
async def disable_user(
    user_id: uuid.UUID, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> User:
    """Ends all of the user's sessions at once."""
    return await service.set_active(
        state.db.sessionmaker, actor=actor, user_id=user_id, active=False
    )


@router.post("/{user_id}/enable", response_model=AdminUserRead)
async def enable_user(
    user_id: uuid.UUID, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> User:
    return await service.set_active(
        state.db.sessionmaker, actor=actor, user_id=user_id, active=True
    )


@router.put("/{user_id}/role", response_model=AdminUserRead)
async def change_role(
    user_id: uuid.UUID, body: RoleChange, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> User:
    """Ends the user's sessions: the new role applies from their next login."""
    return await service.change_role(
        state.db.sessionmaker, actor=actor, user_id=user_id, role=body.role
    )


@router.delete("/{user_id}/totp", response_model=AdminUserRead)
async def reset_totp(
    user_id: uuid.UUID, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> User:
    """Removes the user's TOTP secret and recovery codes and ends their sessions."""
    return await service.reset_totp(state.db.sessionmaker, actor=actor, user_id=user_id)


@router.post("/{user_id}/password", response_model=UserCreated)
async def set_temporary_password(
    user_id: uuid.UUID,
    body: TemporaryPassword,
    _admin: AdminUser,
    actor: ActorDep,
    state: AppStateDep,
) -> UserCreated:
    """A temporary password the user must change at next login; their sessions end."""
    result = await service.set_temporary_password(
        state.db.sessionmaker,
        actor=actor,
        user_id=user_id,
        temporary_password=body.temporary_password,
    )
    return _created(result)


@router.get("/{user_id}/sessions", response_model=list[SessionRead])
async def list_sessions(
    user_id: uuid.UUID, _admin: AdminUser, session: ReadSessionDep
) -> list[AuthSession]:
    return await service.list_user_sessions(session, user_id)


@router.delete("/{user_id}/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_session(
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    _admin: AdminUser,
    actor: ActorDep,
    state: AppStateDep,
) -> None:
    await service.revoke_session(
        state.db.sessionmaker,
        state.token_context,
        actor=actor,
        user_id=user_id,
        session_id=session_id,
    )


@router.delete("/{user_id}/sessions", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_all_sessions(
    user_id: uuid.UUID, _admin: AdminUser, actor: ActorDep, state: AppStateDep
) -> None:
    await service.revoke_all_user_sessions(state.db.sessionmaker, actor=actor, user_id=user_id)
