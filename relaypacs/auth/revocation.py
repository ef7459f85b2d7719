"""Which sessions are revoked, known to every replica at once.

An access token carries its session id (`sid`). Revoking one session (logout, refresh token
reuse, an administrator's revoke) is recorded in the database (the truth) and in a fast store
that `get_current_user` asks on every request:

- `MemoryRevocations`: embedded mode (SQLite, one process, no Redis): a dict.
- `RedisRevocations`: production: one MGET per request. When Redis fails, the database is asked
  instead; a revocation Redis could not record makes the caller raise the user's token_version
  (kills all their tokens through the user row: fail closed). A Redis that lost its data
  (restart without persistence) is detected by a marker key and refilled from the database.
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

    async def is_revoked(self, session_id: uuid.UUID) -> bool: ...

    async def close(self) -> None: ...


class DatabaseRevocations:
    def __init__(self, read_sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = read_sessionmaker

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> bool:
        return True  # the caller's transaction writes auth_session.revoked_at

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        async with self._sessionmaker() as session, session.begin():
            return await repository.is_session_revoked(session, session_id)

    async def recently_revoked(self, within: dt.timedelta) -> list[uuid.UUID]:
        async with self._sessionmaker() as session, session.begin():
            return await repository.sessions_revoked_within(session, within)

    async def close(self) -> None:
        return None


class MemoryRevocations:
    """This process only. Entries are kept as long as an access token can live."""

    def __init__(self, ttl: dt.timedelta) -> None:
        self._ttl = ttl.total_seconds()
        self._until: dict[uuid.UUID, float] = {}

    async def revoke(self, session_ids: Iterable[uuid.UUID]) -> bool:
        now = time.monotonic()
        if len(self._until) > 10_000:
            self._until = {k: v for k, v in self._until.items() if v > now}
        for session_id in session_ids:
            self._until[session_id] = now + self._ttl
        return True

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        until = self._until.get(session_id)
        return until is not None and until > time.monotonic()

    async def close(self) -> None:
        return None


class RedisRevocations:
    def __init__(
        self, redis: Redis, *, prefix: str, ttl: dt.timedelta, database: DatabaseRevocations
    ) -> None:
        self._redis = redis
        self._prefix = f"{prefix}revoked:"
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

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        if self.breaker.closed:
            try:
                complete, revoked = await self._redis.mget(self._marker, self._key(session_id))
            except Exception as exc:  # any Redis trouble: the database decides (fail closed)
                self.breaker.failed(exc)
            else:
                if complete is not None:
                    return revoked is not None
                self._start_refill()
        return await self._database.is_revoked(session_id)

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
