"""Signing in and out: the password step, the second factor (TOTP or a recovery code), the
refresh of a session's tokens and the logout. Each is one call of the auth router; the queries
are in relaypacs/auth/repository.py, the session and token mechanics in
relaypacs/auth/sessions.py.

Each function runs its own transactions: a refusal's audit record and revocations are committed
before its error is raised."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_event
from relaypacs.auth import repository
from relaypacs.auth.errors import (
    InvalidLoginRequest,
    InvalidRefreshToken,
    InvalidTotpCode,
    SessionEnded,
)
from relaypacs.auth.models import User
from relaypacs.auth.policy import POLICY, UPLOAD_INIT
from relaypacs.auth.security import create_mfa_token, decode_mfa_token, hash_refresh_token
from relaypacs.auth.service import check_password
from relaypacs.auth.sessions import (
    IssuedTokens,
    TokenContext,
    revoke_sessions,
    rotate_refresh_token,
    start_session,
)
from relaypacs.auth.totp import TotpCipher, matching_step, totp_required
from relaypacs.db import Database, utcnow
from relaypacs.dicom import DicomValidator
from relaypacs.errors import GatewayError, InvalidCredentials
from relaypacs.fields import name_key
from relaypacs.ratelimit import RateLimited, RateLimits


@dataclass(frozen=True)
class SignedIn:
    """A live session's tokens, and what its account must do first (restricted until then)."""

    tokens: IssuedTokens
    password_change_required: bool
    totp_enrolment_required: bool


@dataclass(frozen=True)
class MfaChallenge:
    """The password was right; the second factor is asked (POST /auth/totp)."""

    mfa_token: str
    expires_in: int


def _signed_in(ctx: TokenContext, tokens: IssuedTokens, user: User) -> SignedIn:
    return SignedIn(
        tokens=tokens,
        password_change_required=user.must_change_password,
        totp_enrolment_required=not user.totp_enabled and totp_required(ctx.settings, user),
    )


async def _start(
    session: AsyncSession,
    ctx: TokenContext,
    validator: DicomValidator,
    *,
    user: User,
    client_ip: str | None,
    user_agent: str | None,
    details: dict[str, Any] | None = None,
) -> SignedIn:
    """Start the session the credentials earned, audit the login, hand out the tokens."""
    if POLICY[UPLOAD_INIT].allows(user.role):
        # An upload is likely to follow: its DICOM validation worker starts now, while the
        # client reads and hashes the study, instead of on its first file.
        validator.warm()
    tokens = await start_session(
        session, ctx, user=user, client_ip=client_ip, user_agent=user_agent
    )
    await record_event(
        session,
        actor=user.actor(client_ip),
        action="auth.login",
        object_type="session",
        object_id=tokens.session_id,
        details=details,
    )
    return _signed_in(ctx, tokens, user)


async def log_in(
    db: Database,
    ctx: TokenContext,
    limits: RateLimits,
    validator: DicomValidator,
    *,
    username: str,
    password: str,
    client_ip: str | None,
    user_agent: str | None,
) -> SignedIn | MfaChallenge:
    """Password step: a session, or the second factor's challenge when TOTP is enrolled."""
    account = name_key(username)  # one account's limits, however its name is typed
    try:
        # Per address: every attempt. Per account: failures only, so that a flood of wrong
        # passwords from one address does not lock the real user (elsewhere) out.
        await limits.hit("login_ip", client_ip or "-")
        await limits.check("login_account_ip", f"{account}|{client_ip}")
        await limits.check("login_account", account)
    except RateLimited:
        if await limits.first_in_a_while(f"login|{account}|{client_ip}"):
            async with db.sessionmaker() as session, session.begin():
                target = await repository.user_id_by_username(session, username)
                await record_event(
                    session,
                    actor=Actor(id=target, client_ip=client_ip),
                    action="auth.login",
                    outcome="failure",
                    details={"reason": "rate_limited"},
                )
        raise
    check = await check_password(db.read_sessionmaker, username=username, password=password)
    user = check.user
    async with db.sessionmaker() as session, session.begin():
        if check.failure is not None or user is None:
            await record_event(
                session,
                actor=Actor(id=user.id if user else None, client_ip=client_ip),
                action="auth.login",
                outcome="failure",
                details={"reason": check.failure or "bad_credentials"},
            )
        elif user.totp_enabled:
            # The password was right; the login itself is recorded after the second factor.
            await record_event(session, actor=user.actor(client_ip), action="auth.mfa_challenge")
            lifetime = dt.timedelta(minutes=ctx.settings.mfa_pending_minutes)
            mfa_token, _ = create_mfa_token(
                user_id=user.id,
                version=user.token_version,
                key=ctx.signing_keys,
                lifetime=lifetime,
            )
            return MfaChallenge(mfa_token=mfa_token, expires_in=int(lifetime.total_seconds()))
        else:
            return await _start(
                session, ctx, validator, user=user, client_ip=client_ip, user_agent=user_agent
            )
    await limits.count("login_account_ip", f"{account}|{client_ip}")
    await limits.count("login_account", account)
    raise InvalidCredentials()


async def log_in_second_factor(
    db: Database,
    ctx: TokenContext,
    limits: RateLimits,
    cipher: TotpCipher,
    validator: DicomValidator,
    *,
    mfa_token: str,
    code: str | None,
    recovery_code: str | None,
    client_ip: str | None,
    user_agent: str | None,
) -> SignedIn:
    """Second step: the `mfa_token` of the password step and a TOTP code, or a recovery code
    (exactly one of the two)."""
    if (code is None) == (recovery_code is None):
        raise InvalidLoginRequest()
    claims = decode_mfa_token(mfa_token, key=ctx.signing_keys)
    account = claims.user_id.hex
    try:
        await limits.hit("totp_ip", client_ip or "-")
        await limits.check("totp_account", account)
    except RateLimited:
        if not await limits.first_in_a_while(f"totp|{account}|{client_ip}"):
            raise
        async with db.sessionmaker() as session, session.begin():
            await record_event(
                session,
                actor=Actor(id=claims.user_id, client_ip=client_ip),
                action="auth.totp_failure",
                outcome="failure",
                details={"reason": "rate_limited"},
            )
        raise
    error: GatewayError | None = None
    async with db.sessionmaker() as session, session.begin():
        user = await repository.get_user(session, claims.user_id, lock=True)
        if (
            user is None
            or not user.is_active
            or user.token_version != claims.version
            or not user.totp_enabled
            or user.totp_secret is None
        ):
            error = SessionEnded()
        else:
            factor = "totp"
            ok = False
            if code is not None:
                step = matching_step(
                    cipher.decrypt(user.totp_secret),
                    code,
                    last_step=user.totp_last_step,
                    now=utcnow(),
                )
                if step is not None:
                    user.totp_last_step = step
                    ok = True
            else:
                factor = "recovery_code"
                assert recovery_code is not None
                found = await repository.lock_unused_recovery_code(
                    session, user.id, cipher.recovery_code_hashes(recovery_code)
                )
                if found is not None:
                    found.used_at = utcnow()
                    ok = True
            if ok:
                return await _start(
                    session,
                    ctx,
                    validator,
                    user=user,
                    client_ip=client_ip,
                    user_agent=user_agent,
                    details={"second_factor": factor},
                )
            await record_event(
                session,
                actor=user.actor(client_ip),
                action="auth.totp_failure",
                outcome="failure",
                details={"reason": "wrong_code", "factor": factor},
            )
            error = InvalidTotpCode()
    await limits.count("totp_account", account)
    raise error


async def refresh(
    db: Database, ctx: TokenContext, *, token: str, client_ip: str | None
) -> SignedIn:
    """New tokens for a refresh token (which is used up); an error once the refusal's
    revocations and audit record are committed."""
    async with db.sessionmaker() as session, session.begin():
        outcome = await rotate_refresh_token(session, ctx, token=token, client_ip=client_ip)
        if outcome.tokens is not None:
            assert outcome.user is not None
            return _signed_in(ctx, outcome.tokens, outcome.user)
    assert outcome.error is not None
    raise outcome.error


async def log_out(
    db: Database,
    ctx: TokenContext,
    *,
    user: User | None,
    session_id: uuid.UUID | None,
    refresh_token: str | None,
    client_ip: str | None,
) -> None:
    """End a session now: the access token's (`user` and its `session_id`) or, without one,
    the refresh token's. Its tokens stop working on every replica."""
    async with db.sessionmaker() as session, session.begin():
        if user is not None:
            assert session_id is not None
            auth_session = await repository.get_session(session, session_id, lock=True)
        else:
            assert refresh_token is not None
            found = await repository.get_refresh_token(session, hash_refresh_token(refresh_token))
            if found is None:
                raise InvalidRefreshToken()
            auth_session = await repository.get_session(session, found.session_id, lock=True)
            owner = (
                await repository.get_user(session, auth_session.user_id) if auth_session else None
            )
            if owner is None:
                raise InvalidRefreshToken()
            user = owner
        if auth_session is not None and auth_session.user_id == user.id:
            await revoke_sessions(session, ctx, [auth_session], reason="logout")
        await record_event(
            session,
            actor=user.actor(client_ip),
            action="auth.logout",
            object_type="session",
            object_id=auth_session.id if auth_session else None,
        )
