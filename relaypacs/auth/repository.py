"""Every query of the auth domain's tables: users, sessions, refresh tokens, recovery codes; and
the user of each request (`UserLoader`: on SQLite one plain statement, chosen once at start).

Functions take the caller's session and flush; the caller's transaction commits."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from sqlalchemy import ColumnElement, bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relaypacs.auth.errors import UsernameTaken
from relaypacs.auth.models import AuthSession, RecoveryCode, RefreshToken, Role, User
from relaypacs.db import Database, column_processor, read_in_one_call, readonly_engine, utcnow
from relaypacs.errors import DatabaseBusy
from relaypacs.fields import name_key

logger = logging.getLogger(__name__)


# --- users -----------------------------------------------------------------------------------


async def get_user(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
    return await session.get(User, user_id, with_for_update=lock)


def _by_name(username: str) -> ColumnElement[bool]:
    """The account a typed name means: its exact name first (accounts that collided before
    migration 0006 keep theirs), else the one whose identity key it has (`ADMIN` is `admin`)."""
    return or_(User.username == username, User.username_key == name_key(username))


async def user_by_username(session: AsyncSession, username: str) -> User | None:
    users = (await session.scalars(select(User).where(_by_name(username)).limit(2))).all()
    return next((u for u in users if u.username == username), users[0] if users else None)


async def user_id_by_username(session: AsyncSession, username: str) -> uuid.UUID | None:
    user = await user_by_username(session, username)
    return user.id if user is not None else None


async def count_users(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(User)) or 0


async def list_users(session: AsyncSession, *, limit: int, offset: int) -> list[User]:
    """By username."""
    return list(
        await session.scalars(select(User).order_by(User.username).limit(limit).offset(offset))
    )


async def users_with_role(
    session: AsyncSession, role: Role, *, active_only: bool = False
) -> list[User]:
    """Every user of `role` (only the active ones: `active_only`), by username."""
    query = select(User).where(User.role == role)
    if active_only:
        query = query.where(User.is_active.is_(True))
    return list(await session.scalars(query.order_by(User.username)))


async def add_user(session: AsyncSession, user: User) -> None:
    """Insert a new user (UsernameTaken if the name exists; the caller's transaction goes on)."""
    session.add(user)
    try:
        async with session.begin_nested():
            await session.flush()
    except IntegrityError:
        raise UsernameTaken() from None


async def raise_token_version(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Every access token of the user stops working (their version is older)."""
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(token_version=User.token_version + 1)
        .execution_options(synchronize_session="fetch")
    )


# --- sessions and refresh tokens -------------------------------------------------------------


async def add_session(session: AsyncSession, auth_session: AuthSession) -> None:
    session.add(auth_session)
    await session.flush()


async def get_session(
    session: AsyncSession, session_id: uuid.UUID, *, lock: bool = False
) -> AuthSession | None:
    return await session.get(AuthSession, session_id, with_for_update=lock)


async def add_refresh_token(session: AsyncSession, token_hash: str, session_id: uuid.UUID) -> None:
    session.add(RefreshToken(token_hash=token_hash, session_id=session_id))
    await session.flush()


async def get_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    return await session.get(RefreshToken, token_hash)


async def lock_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    """The token, locked for its rotation."""
    return await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash).with_for_update()
    )


async def end_sessions_of(
    session: AsyncSession, user_id: uuid.UUID, *, reason: str, keep: uuid.UUID | None = None
) -> int:
    """Mark all of the user's live sessions (but `keep`) revoked; how many there were."""
    query = update(AuthSession).where(
        AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None)
    )
    if keep is not None:
        query = query.where(AuthSession.id != keep)
    result = await session.execute(
        query.values(revoked_at=utcnow(), revoked_reason=reason).execution_options(
            synchronize_session=False
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def live_sessions(session: AsyncSession, *, user_id: uuid.UUID) -> list[AuthSession]:
    """Sessions not revoked and not past their absolute end (newest first)."""
    rows = await session.scalars(
        select(AuthSession)
        .where(
            AuthSession.user_id == user_id,
            AuthSession.revoked_at.is_(None),
            AuthSession.expires_at > utcnow(),
        )
        .order_by(AuthSession.created_at.desc())
    )
    return list(rows)


async def live_session_owner(session: AsyncSession, session_id: uuid.UUID) -> uuid.UUID | None:
    """The user of a session that is not revoked; None: revoked or unknown (deleted with its
    user, or never issued)."""
    row = await session.execute(
        select(AuthSession.user_id).where(
            AuthSession.id == session_id, AuthSession.revoked_at.is_(None)
        )
    )
    found = row.first()
    return found.user_id if found is not None else None


async def sessions_revoked_within(session: AsyncSession, within: dt.timedelta) -> list[uuid.UUID]:
    ids = await session.scalars(
        select(AuthSession.id).where(AuthSession.revoked_at > utcnow() - within)
    )
    return list(ids)


async def users_with_totp_secret(
    session: AsyncSession, *, after: uuid.UUID | None, limit: int
) -> list[User]:
    """The next `limit` users holding a TOTP secret, by id after `after`, locked (a rotation
    and an enrolment never write the same secret at once)."""
    query = select(User).where(User.totp_secret.is_not(None))
    if after is not None:
        query = query.where(User.id > after)
    return list(await session.scalars(query.order_by(User.id).limit(limit).with_for_update()))


async def delete_ended_sessions(
    session: AsyncSession,
    *,
    ended_before: dt.datetime,
    idle_before: dt.datetime,
    revoked_before: dt.datetime,
) -> int:
    """Delete the sessions whose absolute end came before `ended_before`, last used before
    `idle_before` or revoked before `revoked_before`, with their refresh tokens; how many."""
    ended = select(AuthSession.id).where(
        (AuthSession.expires_at < ended_before)
        | (AuthSession.last_used_at < idle_before)
        | (AuthSession.revoked_at < revoked_before)
    )
    ids = list(await session.scalars(ended))
    for at in range(0, len(ids), 500):
        batch = ids[at : at + 500]
        await session.execute(delete(RefreshToken).where(RefreshToken.session_id.in_(batch)))
        await session.execute(delete(AuthSession).where(AuthSession.id.in_(batch)))
    return len(ids)


# --- recovery codes --------------------------------------------------------------------------


async def lock_unused_recovery_code(
    session: AsyncSession, user_id: uuid.UUID, code_hashes: Sequence[str]
) -> RecoveryCode | None:
    """The unused recovery code of the user stored under one of these hashes (one per
    configured TOTP key)."""
    return await session.scalar(
        select(RecoveryCode)
        .where(
            RecoveryCode.user_id == user_id,
            RecoveryCode.code_hash.in_(code_hashes),
            RecoveryCode.used_at.is_(None),
        )
        .limit(1)
        .with_for_update()
    )


async def count_unused_recovery_codes(session: AsyncSession) -> int:
    count = await session.scalar(
        select(func.count()).select_from(RecoveryCode).where(RecoveryCode.used_at.is_(None))
    )
    return int(count or 0)


async def delete_recovery_codes(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))


async def replace_recovery_codes(
    session: AsyncSession, user_id: uuid.UUID, code_hashes: Iterable[str]
) -> None:
    await delete_recovery_codes(session, user_id)
    session.add_all(RecoveryCode(user_id=user_id, code_hash=h) for h in code_hashes)


# --- the user of each request ----------------------------------------------------------------


class UserLoader(Protocol):
    """The user row of each request, detached (it is never written to: writers load their
    own). Chosen once at start (`user_loader`); runs for every request, the chunk PUT too."""

    async def load(self, user_id: uuid.UUID) -> User | None:
        """The user (None: no such row)."""
        ...


class SqliteUserLoader:
    """The user of every request on SQLite, read with one plain SQL statement in one thread call.

    Loading the row through the ORM (a session, a transaction, the identity map) costs about
    0.4 ms of Python per request; the chunk PUT of a 512 KB instance costs about 4 ms in all.
    Here every call still reads the user's whole row from the database, so any change to it,
    by any process, is seen at once; only when the row is identical, column for column, to the
    one a User object was built from is that object returned again (it is never written to:
    writers load their own). A changed or new row is loaded through the ORM, in the same
    snapshot as its raw copy."""

    def __init__(self, engine: Engine, capacity: int = 1024) -> None:
        table = User.__table__
        self._engine = engine
        self._sql = str(select(table).where(table.c.id == bindparam("id")).compile(engine))
        self._bind = column_processor(table.c.id.type.bind_processor(engine.dialect))
        self._capacity = capacity
        self._known: dict[uuid.UUID, tuple[tuple[Any, ...], User]] = {}
        self._reader = readonly_engine(engine)

    async def load(self, user_id: uuid.UUID) -> User | None:
        return await asyncio.to_thread(self.load_blocking, user_id)

    def load_blocking(self, user_id: uuid.UUID) -> User | None:
        """The user (None: no such row). Blocking: call it in a thread. DatabaseBusy when another
        connection holds the database locked for longer than the engine's busy timeout (the
        lookup engine's: relaypacs.db.LOOKUP_BUSY_SECONDS): the request is refused with a 503
        at once, instead of waiting as long as a writer would."""
        try:
            return self._read(user_id)
        except (sqlite3.OperationalError, DBAPIError) as exc:
            error = exc.orig if isinstance(exc, DBAPIError) else exc
            if getattr(error, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY:
                raise
            logger.warning("the database stayed locked: a request's user was not read (503)")
            raise DatabaseBusy() from None

    def _read(self, user_id: uuid.UUID) -> User | None:
        params = (self._bind(user_id),)
        known = self._known.get(user_id)
        if known is not None:
            connection = self._engine.raw_connection()
            try:
                cursor = connection.cursor()
                row = cursor.execute(self._sql, params).fetchone()
                cursor.close()
            finally:
                connection.close()
            if row is not None and tuple(row) == known[0]:
                return known[1]
        with Session(self._reader, expire_on_commit=False) as session, session.begin():
            raw = session.connection().exec_driver_sql(self._sql, params).first()
            user = session.get(User, user_id)
        if raw is None or user is None:
            self._known.pop(user_id, None)
            return None
        if len(self._known) >= self._capacity:
            self._known.clear()
        self._known[user_id] = (tuple(raw), user)
        return user


class RowUserLoader:
    """The user of every request on a server database (PostgreSQL): SqliteUserLoader's
    comparison on the async engine.

    Every call still reads the user's whole row, in one statement outside any transaction
    (one round trip, where a transaction of its own was three; see read_in_one_call), so any
    change to it, by any replica, is seen at once; only when the row is identical, column for
    column, to the one a User object was built from is that object returned again (it is
    never written to: writers load their own). A changed or new row is loaded through the
    ORM, the object and its raw copy from one statement (one snapshot)."""

    def __init__(self, db: Database, capacity: int = 1024) -> None:
        table = User.__table__
        self._db = db
        self._engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._row = select(table).where(table.c.id == bindparam("id"))
        self._both = select(User, *table.c)
        self._capacity = capacity
        self._known: dict[uuid.UUID, tuple[tuple[Any, ...], User]] = {}

    async def load(self, user_id: uuid.UUID) -> User | None:
        known = self._known.get(user_id)
        if known is not None:
            async with self._engine.connect() as connection:
                row = (await connection.execute(self._row, {"id": user_id})).first()
            if row is not None and tuple(row) == known[0]:
                return known[1]

        def read(session: Session) -> tuple[tuple[Any, ...], User] | None:
            found = session.execute(self._both.where(User.id == user_id)).first()
            return (tuple(found)[1:], found[0]) if found is not None else None

        loaded = await read_in_one_call(self._db, read)
        if loaded is None:
            self._known.pop(user_id, None)
            return None
        if len(self._known) >= self._capacity:
            self._known.clear()
        self._known[user_id] = loaded
        return loaded[1]


def user_loader(db: Database) -> UserLoader:
    """SQLite's one-statement loader when the database has a synchronous engine, else the
    row-comparing loader of the async engine."""
    if db.sync_engine is not None:
        return SqliteUserLoader(db.lookup_engine or db.sync_engine)
    return RowUserLoader(db)
