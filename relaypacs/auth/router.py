"""HTTP endpoints of the auth domain: login (password, then TOTP when enrolled), refresh,
logout, password change, TOTP enrolment and one's own sessions."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.service import record_event
from relaypacs.auth.dependencies import (
    SessionUser,
    access_claims,
    bearer_scheme,
    get_session_user,
    totp_required,
)
from relaypacs.auth.errors import (
    InvalidRefreshToken,
    InvalidTotpCode,
    RefreshTokenReused,
    SessionEnded,
    SessionExpired,
    TotpAlreadyEnabled,
    TotpNotStarted,
    WeakPassword,
    WrongPassword,
    WrongTotpCode,
)
from relaypacs.auth.models import AuthSession, RecoveryCode, RefreshToken, User
from relaypacs.auth.policy import POLICY, UPLOAD_INIT
from relaypacs.auth.schemas import (
    LoginRequest,
    PasswordChangeRequest,
    RecoveryCodes,
    RefreshRequest,
    SessionRead,
    TokenResponse,
    TotpCodeRequest,
    TotpEnrolment,
    TotpEnrolRequest,
    TotpLoginRequest,
    UserRead,
)
from relaypacs.auth.security import (
    create_mfa_token,
    decode_mfa_token,
    hash_refresh_token,
    verify_password,
)
from relaypacs.auth.service import change_password, check_password
from relaypacs.auth.sessions import (
    IssuedTokens,
    TokenContext,
    issue_access_token,
    live_sessions,
    revoke_all_sessions,
    revoke_sessions,
    rotate_refresh_token,
    start_session,
)
from relaypacs.auth.totp import (
    TotpCipher,
    matching_step,
    new_recovery_codes,
    new_secret,
    provisioning_uri,
    qr_code_svg_data_uri,
)
from relaypacs.config import Settings
from relaypacs.db import utcnow
from relaypacs.errors import GatewayError, InvalidCredentials, NotAuthenticated, NotFound
from relaypacs.ratelimit import RateLimited, RateLimits
from relaypacs.state import get_app_state

router = APIRouter(prefix="/auth", tags=["auth"])

REFRESH_COOKIE = "relaypacs_refresh"
# The cookie goes to the auth endpoints only, never with other requests.
REFRESH_COOKIE_PATH = "/api/v1/auth"


class InvalidLoginRequest(GatewayError):
    status_code = 422
    code = "invalid_request"
    message = "Give either `code` or `recovery_code`."


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _writer(request: Request) -> async_sessionmaker[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = get_app_state(request).db.sessionmaker
    return sessionmaker


def _ctx(request: Request) -> TokenContext:
    ctx: TokenContext = get_app_state(request).token_context
    return ctx


def _limits(request: Request) -> RateLimits:
    limits: RateLimits = get_app_state(request).rate_limits
    return limits


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


def _deliver(
    request: Request,
    response: Response,
    tokens: IssuedTokens,
    *,
    user: User,
    in_body: bool,
) -> TokenResponse:
    settings: Settings = get_app_state(request).settings
    if not in_body:
        # The browser's way. A client that asked for the token in the body (the CLI) gets no
        # cookie: it would only be a second copy of the token, which an HTTP library then
        # keeps and processes on every request it sends.
        max_age = int((tokens.session_expires_at - utcnow()).total_seconds())
        response.set_cookie(
            REFRESH_COOKIE,
            tokens.refresh_token,
            max_age=max(0, max_age),
            path=REFRESH_COOKIE_PATH,
            secure=settings.secure_cookies,
            httponly=True,
            samesite="strict",
        )
    _no_store(response)
    return TokenResponse(
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
        refresh_token=tokens.refresh_token if in_body else None,
        password_change_required=user.must_change_password,
        totp_enrolment_required=not user.totp_enabled and totp_required(settings, user),
    )


async def _log_in(
    session: AsyncSession,
    request: Request,
    response: Response,
    *,
    user: User,
    ip: str | None,
    in_body: bool,
    details: dict[str, Any] | None = None,
) -> TokenResponse:
    """Start the session the credentials earned, audit the login, hand out the tokens."""
    if POLICY[UPLOAD_INIT].allows(user.role):
        # An upload is likely to follow: its DICOM validation worker starts now, while the
        # client reads and hashes the study, instead of on its first file.
        get_app_state(request).validator.warm()
    tokens = await start_session(
        session,
        _ctx(request),
        user=user,
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
    )
    await record_event(
        session,
        action="auth.login",
        actor_id=user.id,
        actor_role=user.role.value,
        object_type="session",
        object_id=tokens.session_id,
        client_ip=ip,
        details=details,
    )
    return _deliver(request, response, tokens, user=user, in_body=in_body)


@router.post("/login", response_model=TokenResponse)
async def login(body: LoginRequest, request: Request, response: Response) -> TokenResponse:
    """Password step. Tokens, or `mfa_required` + `mfa_token` when TOTP is enrolled."""
    state = get_app_state(request)
    limits = _limits(request)
    ip = client_ip(request)
    account = body.username.lower()
    try:
        # Per address: every attempt. Per account: failures only, so that a flood of wrong
        # passwords from one address does not lock the real user (elsewhere) out.
        await limits.hit("login_ip", ip or "-")
        await limits.check("login_account_ip", f"{account}|{ip}")
        await limits.check("login_account", account)
    except RateLimited:
        if await limits.first_in_a_while(f"login|{account}|{ip}"):
            async with _writer(request)() as session, session.begin():
                target = await session.scalar(select(User.id).where(User.username == body.username))
                await record_event(
                    session,
                    action="auth.login",
                    outcome="failure",
                    actor_id=target,
                    client_ip=ip,
                    details={"reason": "rate_limited"},
                )
        raise
    check = await check_password(
        state.db.read_sessionmaker, username=body.username, password=body.password
    )
    user = check.user
    async with _writer(request)() as session, session.begin():
        if check.failure is not None or user is None:
            await record_event(
                session,
                action="auth.login",
                outcome="failure",
                actor_id=user.id if user else None,
                client_ip=ip,
                details={"reason": check.failure or "bad_credentials"},
            )
        elif user.totp_enabled:
            # The password was right; the login itself is recorded after the second factor.
            await record_event(
                session,
                action="auth.mfa_challenge",
                actor_id=user.id,
                actor_role=user.role.value,
                client_ip=ip,
            )
            lifetime = dt.timedelta(minutes=state.settings.mfa_pending_minutes)
            mfa_token, _ = create_mfa_token(
                user_id=user.id,
                version=user.token_version,
                key=state.signing_key,
                lifetime=lifetime,
            )
            _no_store(response)
            return TokenResponse(
                mfa_required=True, mfa_token=mfa_token, expires_in=int(lifetime.total_seconds())
            )
        else:
            return await _log_in(
                session, request, response, user=user, ip=ip, in_body=body.refresh_in_body
            )
    await limits.count("login_account_ip", f"{account}|{ip}")
    await limits.count("login_account", account)
    raise InvalidCredentials()


@router.post("/totp", response_model=TokenResponse)
async def login_totp(body: TotpLoginRequest, request: Request, response: Response) -> TokenResponse:
    """Second step: the `mfa_token` of the password step and a TOTP code (or a recovery code)."""
    state = get_app_state(request)
    if (body.code is None) == (body.recovery_code is None):
        raise InvalidLoginRequest()
    claims = decode_mfa_token(body.mfa_token, key=state.signing_key)
    limits = _limits(request)
    ip = client_ip(request)
    account = claims.user_id.hex
    try:
        await limits.hit("totp_ip", ip or "-")
        await limits.check("totp_account", account)
    except RateLimited:
        if not await limits.first_in_a_while(f"totp|{account}|{ip}"):
            raise
        async with _writer(request)() as session, session.begin():
            await record_event(
                session,
                action="auth.totp_failure",
                outcome="failure",
                actor_id=claims.user_id,
                client_ip=ip,
                details={"reason": "rate_limited"},
            )
        raise
    cipher: TotpCipher = state.totp_cipher
    error: GatewayError | None = None
    async with _writer(request)() as session, session.begin():
        user = await session.get(User, claims.user_id, with_for_update=True)
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
            if body.code is not None:
                step = matching_step(
                    cipher.decrypt(user.totp_secret),
                    body.code,
                    last_step=user.totp_last_step,
                    now=utcnow(),
                )
                if step is not None:
                    user.totp_last_step = step
                    ok = True
            else:
                factor = "recovery_code"
                assert body.recovery_code is not None
                code = await session.scalar(
                    select(RecoveryCode)
                    .where(
                        RecoveryCode.user_id == user.id,
                        RecoveryCode.code_hash == cipher.recovery_code_hash(body.recovery_code),
                        RecoveryCode.used_at.is_(None),
                    )
                    .with_for_update()
                )
                if code is not None:
                    code.used_at = utcnow()
                    ok = True
            if ok:
                return await _log_in(
                    session,
                    request,
                    response,
                    user=user,
                    ip=ip,
                    in_body=body.refresh_in_body,
                    details={"second_factor": factor},
                )
            await record_event(
                session,
                action="auth.totp_failure",
                outcome="failure",
                actor_id=user.id,
                actor_role=user.role.value,
                client_ip=ip,
                details={"reason": "wrong_code", "factor": factor},
            )
            error = InvalidTotpCode()
    await limits.count("totp_account", account)
    raise error


@router.post("/refresh", response_model=TokenResponse)
async def refresh(
    request: Request, response: Response, body: RefreshRequest | None = None
) -> TokenResponse:
    """A new access token and a new refresh token (the one presented is used up). The refresh
    token comes from the body (CLI) or the cookie (browser)."""
    in_body = body is not None and body.refresh_token is not None
    token = body.refresh_token if body and body.refresh_token else None
    token = token or request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise InvalidRefreshToken()
    error: InvalidRefreshToken | RefreshTokenReused | SessionExpired | None
    async with _writer(request)() as session, session.begin():
        outcome = await rotate_refresh_token(
            session, _ctx(request), token=token, client_ip=client_ip(request)
        )
        error = outcome.error
        if outcome.tokens is not None:
            auth_session = await session.get(AuthSession, outcome.tokens.session_id)
            user = await session.get(User, auth_session.user_id) if auth_session else None
            assert user is not None
            return _deliver(request, response, outcome.tokens, user=user, in_body=in_body)
    assert error is not None
    raise error


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    body: RefreshRequest | None = None,
) -> Response:
    """End this session now: its access and refresh tokens stop working on every replica. The
    session is the access token's, or (an expired access token) the refresh token's, from the
    body or the cookie."""
    ctx = _ctx(request)
    refresh_token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if credentials is None and not refresh_token:
        raise NotAuthenticated()
    bearer_user = await get_session_user(request, credentials) if credentials else None
    async with _writer(request)() as session, session.begin():
        if bearer_user is not None:
            user = bearer_user
            auth_session = await session.get(
                AuthSession, access_claims(request).session_id, with_for_update=True
            )
        else:
            assert refresh_token is not None
            found = await session.get(RefreshToken, hash_refresh_token(refresh_token))
            if found is None:
                raise InvalidRefreshToken()
            auth_session = await session.get(AuthSession, found.session_id, with_for_update=True)
            owner = await session.get(User, auth_session.user_id) if auth_session else None
            if owner is None:
                raise InvalidRefreshToken()
            user = owner
        if auth_session is not None and auth_session.user_id == user.id:
            await revoke_sessions(session, ctx, [auth_session], reason="logout")
        await record_event(
            session,
            action="auth.logout",
            actor_id=user.id,
            actor_role=user.role.value,
            object_type="session",
            object_id=auth_session.id if auth_session else None,
            client_ip=client_ip(request),
        )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(
        REFRESH_COOKIE,
        path=REFRESH_COOKIE_PATH,
        secure=get_app_state(request).settings.secure_cookies,
        httponly=True,
        samesite="strict",
    )
    return response


async def _confirm_password(request: Request, user: User, password: str, *, action: str) -> None:
    """The signed-in user's current password again, before a sensitive change: limited like a
    login per account and address; a wrong one is audited as a failed `action`."""
    limits = _limits(request)
    ip = client_ip(request)
    key = f"{user.username.lower()}|{ip}"
    await limits.check("login_account_ip", key)
    if await asyncio.to_thread(verify_password, user.password_hash, password):
        return
    async with _writer(request)() as session, session.begin():
        await record_event(
            session,
            action=action,
            outcome="failure",
            actor_id=user.id,
            actor_role=user.role.value,
            client_ip=ip,
            details={"reason": "wrong_password"},
        )
    await limits.count("login_account_ip", key)
    raise WrongPassword()


@router.post("/password", response_model=TokenResponse)
async def change_own_password(
    body: PasswordChangeRequest, request: Request, response: Response, user: SessionUser
) -> TokenResponse:
    """Change one's password (also a temporary one). Every other session ends; this one gets a
    new access token (the old one stops working)."""
    ip = client_ip(request)
    await _confirm_password(request, user, body.current_password, action="auth.password_change")
    claims = access_claims(request)
    if body.new_password == body.current_password:
        raise WeakPassword("The new password must differ from the current one.")
    async with _writer(request)() as session, session.begin():
        db_user = await session.get(User, user.id, with_for_update=True)
        if db_user is None:
            raise SessionEnded()
        await change_password(
            session, user=db_user, new_password=body.new_password, temporary=False
        )
        ended = await revoke_all_sessions(
            session, user=db_user, reason="password_change", keep=claims.session_id
        )
        await record_event(
            session,
            action="auth.password_change",
            actor_id=user.id,
            actor_role=user.role.value,
            object_type="user",
            object_id=user.id,
            client_ip=ip,
            details={"sessions_ended": ended},
        )
        access, expires_in = issue_access_token(
            _ctx(request), user=db_user, session_id=claims.session_id
        )
        settings: Settings = get_app_state(request).settings
        _no_store(response)
        return TokenResponse(
            access_token=access,
            expires_in=expires_in,
            totp_enrolment_required=not db_user.totp_enabled and totp_required(settings, db_user),
        )


@router.post("/totp/enrol", response_model=TotpEnrolment)
async def enrol_totp(
    body: TotpEnrolRequest, request: Request, response: Response, user: SessionUser
) -> TotpEnrolment:
    """Start (or restart) TOTP enrolment: a new secret as an otpauth:// URI and a QR code.
    Confirm it with a first code (POST /auth/totp/confirm)."""
    state = get_app_state(request)
    cipher: TotpCipher = state.totp_cipher
    ip = client_ip(request)
    await _confirm_password(request, user, body.password, action="auth.totp_enrol")
    secret = new_secret()
    async with _writer(request)() as session, session.begin():
        db_user = await session.get(User, user.id, with_for_update=True)
        if db_user is None:
            raise SessionEnded()
        if db_user.totp_enabled:
            raise TotpAlreadyEnabled()
        db_user.totp_secret = cipher.encrypt(secret)
        db_user.totp_last_step = None
        await record_event(
            session,
            action="auth.totp_enrol",
            actor_id=user.id,
            actor_role=user.role.value,
            object_type="user",
            object_id=user.id,
            client_ip=ip,
        )
    uri = provisioning_uri(secret, username=user.username, issuer=state.settings.totp_issuer)
    _no_store(response)
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_code=qr_code_svg_data_uri(uri))


@router.post("/totp/confirm", response_model=RecoveryCodes)
async def confirm_totp(
    body: TotpCodeRequest, request: Request, response: Response, user: SessionUser
) -> RecoveryCodes:
    """The first code from the app turns TOTP on; returns ten one-time recovery codes."""
    state = get_app_state(request)
    cipher: TotpCipher = state.totp_cipher
    limits = _limits(request)
    ip = client_ip(request)
    await limits.hit("totp_ip", ip or "-")
    await limits.check("totp_account", user.id.hex)
    codes = new_recovery_codes()
    wrong = False
    async with _writer(request)() as session, session.begin():
        db_user = await session.get(User, user.id, with_for_update=True)
        if db_user is None:
            raise SessionEnded()
        if db_user.totp_enabled:
            raise TotpAlreadyEnabled()
        if db_user.totp_secret is None:
            raise TotpNotStarted()
        step = matching_step(
            cipher.decrypt(db_user.totp_secret), body.code, last_step=None, now=utcnow()
        )
        if step is None:
            wrong = True
            await record_event(
                session,
                action="auth.totp_failure",
                outcome="failure",
                actor_id=user.id,
                actor_role=user.role.value,
                client_ip=ip,
                details={"reason": "wrong_code", "during": "confirm"},
            )
        else:
            db_user.totp_enabled = True
            db_user.totp_last_step = step
            await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user.id))
            session.add_all(
                RecoveryCode(user_id=user.id, code_hash=cipher.recovery_code_hash(code))
                for code in codes
            )
            await record_event(
                session,
                action="auth.totp_confirm",
                actor_id=user.id,
                actor_role=user.role.value,
                object_type="user",
                object_id=user.id,
                client_ip=ip,
                details={"recovery_codes": len(codes)},
            )
    if wrong:
        await limits.count("totp_account", user.id.hex)
        raise WrongTotpCode()
    _no_store(response)
    return RecoveryCodes(recovery_codes=codes)


@router.get("/me", response_model=UserRead)
async def me(user: SessionUser) -> User:
    """Also works while the password must be changed or TOTP enrolled (see the flags)."""
    return user


@router.get("/sessions", response_model=list[SessionRead])
async def my_sessions(request: Request, user: SessionUser) -> list[AuthSession]:
    async with get_app_state(request).db.read_sessionmaker() as session, session.begin():
        return await live_sessions(session, user_id=user.id)


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def end_my_session(session_id: uuid.UUID, request: Request, user: SessionUser) -> None:
    """End one of one's own sessions (another user's is a 404, like a missing one)."""
    async with _writer(request)() as session, session.begin():
        auth_session = await session.get(AuthSession, session_id, with_for_update=True)
        if auth_session is None or auth_session.user_id != user.id:
            raise NotFound("No such session.")
        await revoke_sessions(session, _ctx(request), [auth_session], reason="logout")
        await record_event(
            session,
            action="auth.logout",
            actor_id=user.id,
            actor_role=user.role.value,
            object_type="session",
            object_id=session_id,
            client_ip=client_ip(request),
        )
