"""HTTP endpoints of the auth domain: login (password, then TOTP when enrolled), refresh,
logout, password change, TOTP enrolment and one's own sessions. Each parses the request, calls
one function of relaypacs/auth/login.py or relaypacs/auth/service.py, shapes the answer and
sets (or clears) the refresh cookie."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials

from relaypacs.auth import login as login_service
from relaypacs.auth import service
from relaypacs.auth.dependencies import (
    ActorDep,
    ClientIp,
    SessionUser,
    access_claims,
    bearer_scheme,
    get_session_user,
)
from relaypacs.auth.errors import InvalidRefreshToken
from relaypacs.auth.login import MfaChallenge, SignedIn
from relaypacs.auth.models import User
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
from relaypacs.db import utcnow
from relaypacs.errors import NotAuthenticated
from relaypacs.state import AppStateDep, ReadSessionDep

router = APIRouter(prefix="/auth", tags=["auth"])

REFRESH_COOKIE = "relaypacs_refresh"
# The cookie goes to the auth endpoints only, never with other requests.
REFRESH_COOKIE_PATH = "/api/v1/auth"


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = "no-store"


def _deliver(
    response: Response, signed_in: SignedIn, *, secure_cookies: bool, in_body: bool
) -> TokenResponse:
    tokens = signed_in.tokens
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
            secure=secure_cookies,
            httponly=True,
            samesite="strict",
        )
    _no_store(response)
    return TokenResponse(
        access_token=tokens.access_token,
        expires_in=tokens.expires_in,
        refresh_token=tokens.refresh_token if in_body else None,
        password_change_required=signed_in.password_change_required,
        totp_enrolment_required=signed_in.totp_enrolment_required,
    )


@router.post("/login", response_model=TokenResponse)
async def login(
    body: LoginRequest,
    request: Request,
    response: Response,
    state: AppStateDep,
    ip: ClientIp,
) -> TokenResponse:
    """Password step. Tokens, or `mfa_required` + `mfa_token` when TOTP is enrolled."""
    outcome = await login_service.log_in(
        state.db,
        state.token_context,
        state.rate_limits,
        state.validator,
        username=body.username,
        password=body.password,
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
    )
    if isinstance(outcome, MfaChallenge):
        _no_store(response)
        return TokenResponse(
            mfa_required=True, mfa_token=outcome.mfa_token, expires_in=outcome.expires_in
        )
    return _deliver(
        response,
        outcome,
        secure_cookies=state.settings.secure_cookies,
        in_body=body.refresh_in_body,
    )


@router.post("/totp", response_model=TokenResponse)
async def login_totp(
    body: TotpLoginRequest,
    request: Request,
    response: Response,
    state: AppStateDep,
    ip: ClientIp,
) -> TokenResponse:
    """Second step: the `mfa_token` of the password step and a TOTP code (or a recovery code)."""
    signed_in = await login_service.log_in_second_factor(
        state.db,
        state.token_context,
        state.rate_limits,
        state.totp_cipher,
        state.validator,
        mfa_token=body.mfa_token,
        code=body.code,
        recovery_code=body.recovery_code,
        client_ip=ip,
        user_agent=request.headers.get("user-agent"),
    )
    return _deliver(
        response,
        signed_in,
        secure_cookies=state.settings.secure_cookies,
        in_body=body.refresh_in_body,
    )


@router.post("/refresh", response_model=TokenResponse)
async def refresh(
    request: Request,
    response: Response,
    state: AppStateDep,
    ip: ClientIp,
    body: RefreshRequest | None = None,
) -> TokenResponse:
    """A new access token and a new refresh token (the one presented is used up). The refresh
    token comes from the body (CLI) or the cookie (browser)."""
    in_body = body is not None and body.refresh_token is not None
    token = body.refresh_token if body and body.refresh_token else None
    token = token or request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise InvalidRefreshToken()
    signed_in = await login_service.refresh(
        state.db, state.token_context, token=token, client_ip=ip
    )
    return _deliver(
        response, signed_in, secure_cookies=state.settings.secure_cookies, in_body=in_body
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    state: AppStateDep,
    ip: ClientIp,
    body: RefreshRequest | None = None,
) -> Response:
    """End this session now: its access and refresh tokens stop working on every replica. The
    session is the access token's, or (an expired access token) the refresh token's, from the
    body or the cookie."""
    refresh_token = (body.refresh_token if body else None) or request.cookies.get(REFRESH_COOKIE)
    if credentials is None and not refresh_token:
        raise NotAuthenticated()
    bearer_user = await get_session_user(request, credentials) if credentials else None
    await login_service.log_out(
        state.db,
        state.token_context,
        user=bearer_user,
        session_id=access_claims(request).session_id if bearer_user else None,
        refresh_token=refresh_token,
        client_ip=ip,
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(
        REFRESH_COOKIE,
        path=REFRESH_COOKIE_PATH,
        secure=state.settings.secure_cookies,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/password", response_model=TokenResponse)
async def change_own_password(
    body: PasswordChangeRequest,
    request: Request,
    response: Response,
    user: SessionUser,
    actor: ActorDep,
    state: AppStateDep,
) -> TokenResponse:
    """Change one's password (also a temporary one). Every other session ends; this one gets a
    new access token (the old one stops working)."""
    new = await service.change_own_password(
        state.db,
        state.token_context,
        state.rate_limits,
        user=user,
        actor=actor,
        session_id=access_claims(request).session_id,
        current_password=body.current_password,
        new_password=body.new_password,
    )
    _no_store(response)
    return TokenResponse(
        access_token=new.access_token,
        expires_in=new.expires_in,
        totp_enrolment_required=new.totp_enrolment_required,
    )


@router.post("/totp/enrol", response_model=TotpEnrolment)
async def enrol_totp(
    body: TotpEnrolRequest,
    response: Response,
    user: SessionUser,
    actor: ActorDep,
    state: AppStateDep,
) -> TotpEnrolment:
    """Start (or restart) TOTP enrolment: a new secret as an otpauth:// URI and a QR code.
    Confirm it with a first code (POST /auth/totp/confirm)."""
    enrolment = await service.start_totp_enrolment(
        state.db,
        state.rate_limits,
        state.totp_cipher,
        user=user,
        actor=actor,
        password=body.password,
        issuer=state.settings.totp_issuer,
    )
    _no_store(response)
    return enrolment


@router.post("/totp/confirm", response_model=RecoveryCodes)
async def confirm_totp(
    body: TotpCodeRequest,
    response: Response,
    user: SessionUser,
    actor: ActorDep,
    state: AppStateDep,
) -> RecoveryCodes:
    """The first code from the app turns TOTP on; returns ten one-time recovery codes."""
    codes = await service.confirm_totp(
        state.db, state.rate_limits, state.totp_cipher, user=user, actor=actor, code=body.code
    )
    _no_store(response)
    return RecoveryCodes(recovery_codes=codes)


@router.get("/me", response_model=UserRead)
async def me(user: SessionUser) -> User:
    """Also works while the password must be changed or TOTP enrolled (see the flags)."""
    return user


@router.get("/sessions", response_model=list[SessionRead])
async def my_sessions(
    request: Request, user: SessionUser, session: ReadSessionDep
) -> list[SessionRead]:
    """One's live sessions, newest first; `current` marks the one that asks."""
    current = access_claims(request).session_id
    return [
        SessionRead.model_validate(s).model_copy(update={"current": s.id == current})
        for s in await service.my_sessions(session, user=user)
    ]


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def end_my_session(
    session_id: uuid.UUID, user: SessionUser, actor: ActorDep, state: AppStateDep
) -> None:
    """End one of one's own sessions (another user's is a 404, like a missing one)."""
    await service.end_my_session(
        state.db, state.token_context, user=user, actor=actor, session_id=session_id
    )
