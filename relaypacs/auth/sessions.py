"""Sessions: a login starts one; its refresh tokens rotate on every use; reuse of a rotated one
revokes the whole session (family). Services flush, the caller's transaction commits; the
queries are in relaypacs/auth/repository.py."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.service import record_event
from relaypacs.auth import repository
from relaypacs.auth.errors import InvalidRefreshToken, RefreshTokenReused, SessionExpired
from relaypacs.auth.models import AuthSession, User
from relaypacs.auth.revocation import Revocations
from relaypacs.auth.security import (
    KeyRing,
    create_access_token,
    hash_refresh_token,
    new_refresh_token,
)
from relaypacs.config import Settings
from relaypacs.db import utcnow


@dataclass(frozen=True)
class TokenContext:
    """What issuing tokens needs from the application."""

    settings: Settings
    signing_keys: KeyRing
    revocations: Revocations

    @property
    def access_lifetime(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.settings.access_token_minutes)


@dataclass(frozen=True)
class IssuedTokens:
    access_token: str
    expires_in: int
    refresh_token: str
    session_id: uuid.UUID
    session_expires_at: dt.datetime


def issue_access_token(ctx: TokenContext, *, user: User, session_id: uuid.UUID) -> tuple[str, int]:
    token, _ = create_access_token(
        user_id=user.id,
        role=user.role,
        session_id=session_id,
        version=user.token_version,
        key=ctx.signing_keys,
        lifetime=ctx.access_lifetime,
    )
    return token, int(ctx.access_lifetime.total_seconds())


async def _new_refresh_token(session: AsyncSession, session_id: uuid.UUID) -> str:
    token = new_refresh_token()
    await repository.add_refresh_token(session, hash_refresh_token(token), session_id)
    return token


async def start_session(
    session: AsyncSession,
    ctx: TokenContext,
    *,
    user: User,
    client_ip: str | None,
    user_agent: str | None,
) -> IssuedTokens:
    now = utcnow()
    auth_session = AuthSession(
        id=uuid.uuid4(),
        user_id=user.id,
        created_at=now,
        last_used_at=now,
        expires_at=now + dt.timedelta(minutes=ctx.settings.refresh_absolute_minutes),
        client_ip=client_ip,
        user_agent=(user_agent or "")[:256] or None,
    )
    await repository.add_session(session, auth_session)
    await ctx.revocations.started(auth_session.id, user.id)
    refresh = await _new_refresh_token(session, auth_session.id)
    access, expires_in = issue_access_token(ctx, user=user, session_id=auth_session.id)
    return IssuedTokens(access, expires_in, refresh, auth_session.id, auth_session.expires_at)


@dataclass(frozen=True)
class RefreshOutcome:
    """Either new tokens (and their user), or the error to raise once the transaction (with
    its audit record and revocations) is committed."""

    tokens: IssuedTokens | None = None
    user: User | None = None
    error: InvalidRefreshToken | RefreshTokenReused | SessionExpired | None = None


async def rotate_refresh_token(
    session: AsyncSession, ctx: TokenContext, *, token: str, client_ip: str | None
) -> RefreshOutcome:
    found = await repository.lock_refresh_token(session, hash_refresh_token(token))
    if found is None:
        return RefreshOutcome(error=InvalidRefreshToken())
    auth_session = await repository.get_session(session, found.session_id, lock=True)
    user = await repository.get_user(session, auth_session.user_id) if auth_session else None
    if auth_session is None or user is None or auth_session.revoked_at is not None:
        return RefreshOutcome(error=InvalidRefreshToken())
    actor = user.actor(client_ip)
    now = utcnow()
    if found.used_at is not None:
        # A rotated token again: someone holds a copy. End the family, the newest token too.
        await revoke_sessions(session, ctx, [auth_session], reason="refresh_reuse")
        await record_event(
            session,
            action="auth.refresh_reuse",
            outcome="failure",
            actor=actor,
            object_type="session",
            object_id=auth_session.id,
        )
        return RefreshOutcome(error=RefreshTokenReused())
    idle_end = auth_session.last_used_at + dt.timedelta(minutes=ctx.settings.refresh_idle_minutes)
    if not user.is_active or now >= auth_session.expires_at or now >= idle_end:
        reason = "disabled" if not user.is_active else "expired"
        await revoke_sessions(session, ctx, [auth_session], reason=reason)
        await record_event(
            session,
            action="auth.refresh",
            outcome="failure",
            actor=actor,
            object_type="session",
            object_id=auth_session.id,
            details={"reason": reason},
        )
        return RefreshOutcome(error=SessionExpired())
    found.used_at = now
    auth_session.last_used_at = now
    refresh = await _new_refresh_token(session, auth_session.id)
    access, expires_in = issue_access_token(ctx, user=user, session_id=auth_session.id)
    await record_event(
        session,
        action="auth.refresh",
        actor=actor,
        object_type="session",
        object_id=auth_session.id,
    )
    return RefreshOutcome(
        tokens=IssuedTokens(access, expires_in, refresh, auth_session.id, auth_session.expires_at),
        user=user,
    )


async def revoke_sessions(
    session: AsyncSession, ctx: TokenContext, sessions: Sequence[AuthSession], *, reason: str
) -> None:
    """End these sessions now, on every replica: their refresh tokens die with the row, their
    access tokens through the revocation store (or, if it cannot be told, the user's
    token_version, which ends all of that user's sessions: fail closed)."""
    now = utcnow()
    live = [s for s in sessions if s.revoked_at is None]
    for auth_session in live:
        auth_session.revoked_at = now
        auth_session.revoked_reason = reason
    await session.flush()
    if live and not await ctx.revocations.revoke([s.id for s in live]):
        for user_id in {s.user_id for s in live}:
            await repository.raise_token_version(session, user_id)


async def revoke_all_sessions(
    session: AsyncSession, *, user: User, reason: str, keep: uuid.UUID | None = None
) -> int:
    """End all of the user's sessions (but `keep`): their refresh tokens in the database, every
    access token at once through token_version (the caller issues a new one for `keep`)."""
    ended = await repository.end_sessions_of(session, user.id, reason=reason, keep=keep)
    user.token_version += 1
    await session.flush()
    return ended
