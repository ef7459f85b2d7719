"""Accounts: users and passwords (created here, by the command line and by administrators), and
what a signed-in user does with their own account: password, TOTP enrolment, sessions. Signing
in and out is relaypacs/auth/login.py. The queries are in relaypacs/auth/repository.py, the
session and token mechanics in relaypacs/auth/sessions.py.

Functions that take a `Database` run their own transactions (the audit record of a refusal is
committed although the call fails); the others work in the caller's."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import SYSTEM, Actor
from relaypacs.audit.service import record_event
from relaypacs.auth import repository
from relaypacs.auth.errors import (
    SessionEnded,
    TotpAlreadyEnabled,
    TotpNotStarted,
    UsernameTaken,
    WeakPassword,
    WrongPassword,
    WrongTotpCode,
)
from relaypacs.auth.models import AuthSession, Role, User
from relaypacs.auth.schemas import TotpEnrolment
from relaypacs.auth.security import (
    hash_password,
    verify_password,
)
from relaypacs.auth.sessions import (
    TokenContext,
    issue_access_token,
    revoke_all_sessions,
    revoke_sessions,
)
from relaypacs.auth.totp import (
    TotpCipher,
    TotpUnreadable,
    matching_step,
    new_recovery_codes,
    new_secret,
    provisioning_uri,
    qr_code_svg_data_uri,
    totp_required,
)
from relaypacs.db import Database, utcnow
from relaypacs.errors import NotFound
from relaypacs.fields import name_key
from relaypacs.ratelimit import RateLimits

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LENGTH = 12


# --- users and passwords ---------------------------------------------------------------------


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def checked_new_password(password: str) -> str:
    """`password`, if strong enough for a new one; else WeakPassword (422)."""
    try:
        check_new_password(password)
    except ValueError as exc:
        raise WeakPassword(str(exc).capitalize() + ".") from None
    return password


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
    await repository.add_user(session, user)
    if not audit:
        return user
    await record_event(
        session,
        actor=SYSTEM,
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
        user = await repository.user_by_username(session, username)
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
    checked_new_password(new_password)
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
            if await repository.count_users(session):
                return None
        password = secrets.token_urlsafe(18)
        try:
            async with session.begin():
                await create_user(session, username="admin", password=password, role=Role.ADMIN)
        except UsernameTaken:
            return None
        return password


async def remove_totp(session: AsyncSession, user: User, *, reason: str) -> int:
    """The user's TOTP secret and recovery codes are gone (they enrol again at next login) and
    their sessions end; how many ended. The caller records who asked."""
    user.totp_secret = None
    user.totp_enabled = False
    user.totp_last_step = None
    await repository.delete_recovery_codes(session, user.id)
    return await revoke_all_sessions(session, user=user, reason=reason)


async def reset_totp_by_username(session: AsyncSession, username: str) -> bool:
    """`relaypacs users reset-totp`: remove a user's TOTP (False: no such user). Audited
    without an actor, `via: cli`."""
    user = await repository.user_by_username(session, username)
    if user is None:
        return False
    await remove_totp(session, user, reason="totp_reset")
    await record_event(
        session,
        actor=SYSTEM,
        action="admin.user_totp_reset",
        object_type="user",
        object_id=user.id,
        details={"via": "cli"},
    )
    return True


@dataclass(frozen=True)
class TotpRotation:
    rotated: int  # re-encrypted with the current key by this run
    current: int  # already under the current key (an earlier, maybe interrupted, run)
    unreadable: int  # no configured key decrypts them: those users need a TOTP reset
    # Unused recovery codes (of every user): one-way hashes, not re-keyed; those made before
    # the new key was configured work only while the old key stays configured.
    recovery_codes: int = 0


async def rotate_totp_secrets(
    sessionmaker: async_sessionmaker[AsyncSession], cipher: TotpCipher, *, batch: int = 200
) -> TotpRotation:
    """`relaypacs users rotate-totp-key`: every stored TOTP secret encrypted with the current
    key. Idempotent and resumable: one transaction per batch of users, and a secret already
    under the current key is left as it is, so a run that stopped half-way is simply run
    again. Audited once per run that changed something (counts only)."""
    rotated = current = unreadable = 0
    after: uuid.UUID | None = None
    while True:
        async with sessionmaker() as session, session.begin():
            users = await repository.users_with_totp_secret(session, after=after, limit=batch)
            for user in users:
                assert user.totp_secret is not None
                if cipher.is_current(user.totp_secret):
                    current += 1
                    continue
                try:
                    user.totp_secret = cipher.rotate(user.totp_secret)
                    rotated += 1
                except TotpUnreadable:
                    unreadable += 1
        if len(users) < batch:
            break
        after = users[-1].id
    if rotated or unreadable:
        async with sessionmaker() as session, session.begin():
            await record_event(
                session,
                actor=SYSTEM,
                action="admin.totp_key_rotated",
                outcome="success" if not unreadable else "failure",
                details={
                    "via": "cli",
                    "rotated": rotated,
                    "already_current": current,
                    "unreadable": unreadable,
                },
            )
    async with sessionmaker() as session, session.begin():
        recovery_codes = await repository.count_unused_recovery_codes(session)
    return TotpRotation(
        rotated=rotated, current=current, unreadable=unreadable, recovery_codes=recovery_codes
    )


# --- one's own account -----------------------------------------------------------------------


async def confirm_password(
    db: Database, limits: RateLimits, *, user: User, actor: Actor, password: str, action: str
) -> None:
    """The signed-in user's current password again, before a sensitive change: limited like a
    login per account and address; a wrong one is audited as a failed `action`."""
    key = f"{name_key(user.username)}|{actor.client_ip}"
    await limits.check("login_account_ip", key)
    if await asyncio.to_thread(verify_password, user.password_hash, password):
        return
    async with db.sessionmaker() as session, session.begin():
        await record_event(
            session,
            actor=actor,
            action=action,
            outcome="failure",
            details={"reason": "wrong_password"},
        )
    await limits.count("login_account_ip", key)
    raise WrongPassword()


@dataclass(frozen=True)
class NewAccessToken:
    access_token: str
    expires_in: int
    totp_enrolment_required: bool


async def change_own_password(
    db: Database,
    ctx: TokenContext,
    limits: RateLimits,
    *,
    user: User,
    actor: Actor,
    session_id: uuid.UUID,
    current_password: str,
    new_password: str,
) -> NewAccessToken:
    """Change one's password (also a temporary one). Every other session ends; this one
    (`session_id`) gets a new access token (the old one stops working)."""
    await confirm_password(
        db, limits, user=user, actor=actor, password=current_password, action="auth.password_change"
    )
    if new_password == current_password:
        raise WeakPassword("The new password must differ from the current one.")
    async with db.sessionmaker() as session, session.begin():
        db_user = await repository.get_user(session, user.id, lock=True)
        if db_user is None:
            raise SessionEnded()
        await change_password(session, user=db_user, new_password=new_password, temporary=False)
        ended = await revoke_all_sessions(
            session, user=db_user, reason="password_change", keep=session_id
        )
        await record_event(
            session,
            actor=actor,
            action="auth.password_change",
            object_type="user",
            object_id=user.id,
            details={"sessions_ended": ended},
        )
        access, expires_in = issue_access_token(ctx, user=db_user, session_id=session_id)
        return NewAccessToken(
            access_token=access,
            expires_in=expires_in,
            totp_enrolment_required=not db_user.totp_enabled
            and totp_required(ctx.settings, db_user),
        )


async def start_totp_enrolment(
    db: Database,
    limits: RateLimits,
    cipher: TotpCipher,
    *,
    user: User,
    actor: Actor,
    password: str,
    issuer: str,
) -> TotpEnrolment:
    """Start (or restart) TOTP enrolment: a new secret as an otpauth:// URI and a QR code."""
    await confirm_password(
        db, limits, user=user, actor=actor, password=password, action="auth.totp_enrol"
    )
    secret = new_secret()
    async with db.sessionmaker() as session, session.begin():
        db_user = await repository.get_user(session, user.id, lock=True)
        if db_user is None:
            raise SessionEnded()
        if db_user.totp_enabled:
            raise TotpAlreadyEnabled()
        db_user.totp_secret = cipher.encrypt(secret)
        db_user.totp_last_step = None
        await record_event(
            session, actor=actor, action="auth.totp_enrol", object_type="user", object_id=user.id
        )
    uri = provisioning_uri(secret, username=user.username, issuer=issuer)
    return TotpEnrolment(secret=secret, otpauth_uri=uri, qr_code=qr_code_svg_data_uri(uri))


async def confirm_totp(
    db: Database, limits: RateLimits, cipher: TotpCipher, *, user: User, actor: Actor, code: str
) -> list[str]:
    """The first code from the app turns TOTP on; the ten one-time recovery codes."""
    await limits.hit("totp_ip", actor.client_ip or "-")
    await limits.check("totp_account", user.id.hex)
    codes = new_recovery_codes()
    wrong = False
    async with db.sessionmaker() as session, session.begin():
        db_user = await repository.get_user(session, user.id, lock=True)
        if db_user is None:
            raise SessionEnded()
        if db_user.totp_enabled:
            raise TotpAlreadyEnabled()
        if db_user.totp_secret is None:
            raise TotpNotStarted()
        step = matching_step(
            cipher.decrypt(db_user.totp_secret), code, last_step=None, now=utcnow()
        )
        if step is None:
            wrong = True
            await record_event(
                session,
                actor=actor,
                action="auth.totp_failure",
                outcome="failure",
                details={"reason": "wrong_code", "during": "confirm"},
            )
        else:
            db_user.totp_enabled = True
            db_user.totp_last_step = step
            await repository.replace_recovery_codes(
                session, user.id, (cipher.recovery_code_hash(c) for c in codes)
            )
            await record_event(
                session,
                actor=actor,
                action="auth.totp_confirm",
                object_type="user",
                object_id=user.id,
                details={"recovery_codes": len(codes)},
            )
    if wrong:
        await limits.count("totp_account", user.id.hex)
        raise WrongTotpCode()
    return codes


async def my_sessions(session: AsyncSession, *, user: User) -> list[AuthSession]:
    """One's live sessions, newest first."""
    return await repository.live_sessions(session, user_id=user.id)


async def end_my_session(
    db: Database, ctx: TokenContext, *, user: User, actor: Actor, session_id: uuid.UUID
) -> None:
    """End one of one's own sessions (another user's is a 404, like a missing one)."""
    async with db.sessionmaker() as session, session.begin():
        auth_session = await repository.get_session(session, session_id, lock=True)
        if auth_session is None or auth_session.user_id != user.id:
            raise NotFound("No such session.")
        await revoke_sessions(session, ctx, [auth_session], reason="logout")
        await record_event(
            session, actor=actor, action="auth.logout", object_type="session", object_id=session_id
        )


async def sweep_ended_sessions(
    session: AsyncSession, *, idle: dt.timedelta, token_lifetime: dt.timedelta
) -> int:
    """The scheduled sweep: delete the sessions that ended (past their absolute end, idle for
    longer than `idle`, or revoked) more than `token_lifetime` ago, with their refresh
    tokens: every access token of theirs has run out, so neither their row nor their
    revocation has anything left to allow or refuse (a deleted session is unknown, which
    every check treats as ended). Returns how many were deleted."""
    before = utcnow() - token_lifetime
    return await repository.delete_ended_sessions(
        session, ended_before=before, idle_before=before - idle, revoked_before=before
    )
