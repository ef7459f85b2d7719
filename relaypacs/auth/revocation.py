"""Which sessions are live, and whose, known to every replica at once.

An access token carries its session id (`sid`) and its user (`sub`). A request passes only if
that session exists, is not revoked and belongs to that user, in every mode (so a token forged
with a leaked key cannot borrow another user's live session, nor name one that never was).
Revoking one session (logout, refresh token reuse, an administrator's revoke) is recorded in the
database (the truth) and in a fast store that `get_current_user` asks on every request:

- `MemoryRevocations`: embedded mode (SQLite, one process, no Redis): dicts; a session not seen
  yet by this process (issued before a restart) is looked up once in the database.
- `RedisRevocations`: production: one MGET per request (the marker, the revocation, the
  session's owner, written at login). When Redis fails, the database is asked instead; a
  revocation Redis could not record makes the caller raise the user's token_version (kills all
  their tokens through the user row: fail closed). A Redis that lost its data (restart without
  persistence) is detected by a marker key and refilled from the database.
- `DatabaseRevocations`: several processes without Redis: one query per request.

Revoking all of a user's sessions needs none of this: raising `user.token_version` does it
through the user row every request loads anyway.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Protocol

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.auth import repository
from relaypacs.redisconn import Breaker

logger = logging.getLogger("relaypacs.auth")

MARKER_SECONDS = 3600


class Revocations(Protocol):
    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> bool:
        """Record the revocations; False when every replica cannot be told (the caller must
        then fall back to raising the users' token_version)."""

    async def started(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """A new session (login): whose it is, for is_live."""

    async def is_live(self, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        """The session exists, is not revoked, and is this user's."""

    async def close(self) -> None: ...


class DatabaseRevocations:
    def __init__(self, read_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = read_sessionmaker

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> bool:
        return True  # the caller's transaction writes auth_session.revoked_at

    async def started(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        return None  # the caller's transaction writes the auth_session row

    async def owner(self, session_id: uuid.UUID) -> uuid.UUID | None:
        async with self._sessionmaker() as session, session.begin():
            return await repository.live_session_owner(session, session_id)

    async def is_live(self, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        return await self.owner(session_id) == user_id

    async def recently_revoked(self, within: dt.timedelta) -> list[uuid.UUID]:
        async with self._sessionmaker() as session, session.begin():
            return await repository.sessions_revoked_within(session, within)

    async def close(self) -> None:
        return None


class MemoryRevocations:
    """This process only. Revocations are kept as long as an access token can live; owners of
    live sessions as long as there are not too many (then asked of the database again)."""

    def __init__(self, ttl: dt.timedelta, database: DatabaseRevocations) -> None:
        self._ttl = ttl.total_seconds()
        self._until: dict[uuid.UUID, float] = {}
        self._owners: dict[uuid.UUID, uuid.UUID] = {}
        self._database = database

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> bool:
        now = time.monotonic()
        if len(self._until) > 10_000:
            self._until = {k: v for k, v in self._until.items() if v > now}
        for session_id in session_ids:
            self._until[session_id] = now + self._ttl
            self._owners.pop(session_id, None)
        return True

    async def started(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        self._remember(session_id, user_id)

    def _remember(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        if len(self._owners) >= 50_000:
            self._owners.clear()
        self._owners[session_id] = user_id

    async def is_live(self, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        until = self._until.get(session_id)
        if until is not None and until > time.monotonic():
            return False
        owner = self._owners.get(session_id)
        if owner is None:  # issued before this process started, or forgotten: ask once
            owner = await self._database.owner(session_id)
            if owner is None:
                return False
            self._remember(session_id, owner)
        return owner == user_id

    async def close(self) -> None:
        return None


class RedisRevocations:
    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        ttl: dt.timedelta,
        session_ttl: dt.timedelta,
        database: DatabaseRevocations,
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}revoked:"
        self._owner_prefix = f"{prefix}session:"
        # A session's owner is kept as long as a session can last (then it is asked of the
        # database again, should it still be live).
        self._session_ttl = max(1, int(session_ttl.total_seconds()))
        # Present while Redis holds every revocation of the last `ttl`; gone after a restart
        # that lost the data, until refilled from the database.
        self._marker = f"{prefix}revocations-complete"
        self._ttl = max(1, int(ttl.total_seconds()))
        self._database = database
        self.breaker = Breaker("token revocation")
        self._refill: asyncio.Task[None] | None = None

    def _key(self, session_id: uuid.UUID) -> str:
        return f"{self._prefix}{session_id.hex}"

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> bool:
        keys = [self._key(s) for s in session_ids]
        if not keys:
            return True
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, b"1", ex=self._ttl)
                await pipe.execute()
        except Exception as exc:  # any Redis trouble: the database decides (fail closed)
            self.breaker.failed(exc)
            return False
        return True

    def _owner_key(self, session_id: uuid.UUID) -> str:
        return f"{self._owner_prefix}{session_id.hex}"

    async def started(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        await self._set_owner(session_id, user_id)

    async def _set_owner(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        if not self.breaker.closed:
            return  # asked of the database while Redis is away
        try:
            await self._redis.set(self._owner_key(session_id), user_id.hex, ex=self._session_ttl)
        except Exception as exc:  # the database answers for this session meanwhile
            self.breaker.failed(exc)

    async def is_live(self, session_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        if self.breaker.closed:
            try:
                complete, revoked, owner = await self._redis.mget(
                    self._marker, self._key(session_id), self._owner_key(session_id)
                )
            except Exception as exc:  # any Redis trouble: the database decides (fail closed)
                self.breaker.failed(exc)
            else:
                if complete is not None:
                    if revoked is not None:
                        return False
                    if owner is not None:
                        text = owner.decode() if isinstance(owner, bytes) else str(owner)
                        return text == user_id.hex
                    # Not known to Redis (issued before this version, or expired there):
                    # the database says, and Redis remembers.
                    live_owner = await self._database.owner(session_id)
                    if live_owner is None:
                        return False
                    await self._set_owner(session_id, live_owner)
                    return live_owner == user_id
                self._start_refill()
        return await self._database.is_live(session_id, user_id)

    async def ensure_complete(self) -> None:
        """Fill Redis from the database if it lost its data (start-up, then as detected)."""
        try:
            if await self._redis.exists(self._marker):
                return
            revoked = await self._database.recently_revoked(dt.timedelta(seconds=self._ttl))
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in revoked:
                    pipe.set(self._key(session_id), b"1", ex=self._ttl)
                # Expires too (refilled then, a cheap query): no key of a gone deployment or
                # test run stays in Redis for ever.
                pipe.set(self._marker, b"1", ex=MARKER_SECONDS)
                await pipe.execute()
        except Exception as exc:  # any Redis trouble: the database decides (fail closed)
            self.breaker.failed(exc)

    def _start_refill(self) -> None:
        if self._refill is None or self._refill.done():
            self._refill = asyncio.create_task(self.ensure_complete())

    async def close(self) -> None:
        if self._refill is not None:
            await asyncio.gather(self._refill, return_exceptions=True)
        await self._redis.aclose()
