"""HTTP endpoints of the auth domain."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.auth.dependencies import CurrentUser
from relaypacs.auth.models import User
from relaypacs.auth.schemas import LoginRequest, TokenResponse, UserRead
from relaypacs.auth.security import create_access_token
from relaypacs.auth.service import authenticate
from relaypacs.config import Settings
from relaypacs.errors import InvalidCredentials

router = APIRouter(prefix="/auth", tags=["auth"])


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@router.post("/login", response_model=TokenResponse)
async def login(body: LoginRequest, request: Request) -> TokenResponse:
    settings: Settings = request.app.state.settings
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    # Own transaction: a failed login must still leave its audit record.
    async with sessionmaker() as session, session.begin():
        user = await authenticate(
            session, username=body.username, password=body.password, client_ip=client_ip(request)
        )
    if user is None:
        raise InvalidCredentials()
    lifetime = dt.timedelta(minutes=settings.access_token_minutes)
    token, _ = create_access_token(
        user_id=user.id, role=user.role, key=request.app.state.signing_key, lifetime=lifetime
    )
    return TokenResponse(access_token=token, expires_in=int(lifetime.total_seconds()))


@router.get("/me", response_model=UserRead)
async def me(user: CurrentUser) -> User:
    return user
