"""Rate limits (the `limits` library): in Redis when configured, else in this process's memory.

A limit is named after its setting (`login_ip` is `rate_limit_login_ip`). When Redis fails, the
limits are counted in memory for a while: still limited per replica, never unlimited. A route's
per-user limit is relaypacs.auth.dependencies.per_user.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import RateLimiter, SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

from relaypacs.config import Settings
from relaypacs.errors import GatewayError
from relaypacs.redisconn import SOCKET_TIMEOUT, Breaker

LimitName = Literal[
    "login_ip",
    "login_account_ip",
    "login_account",
    "totp_ip",
    "totp_account",
    "upload_init",
    "upload_chunk",
]
LIMIT_NAMES: tuple[LimitName, ...] = (
    "login_ip",
    "login_account_ip",
    "login_account",
    "totp_ip",
    "totp_account",
    "upload_init",
    "upload_chunk",
)


class RateLimited(GatewayError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests; try again later."

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many requests; try again in {retry_after} s.",
            details={"retry_after": retry_after},
        )
        self.headers = {"Retry-After": str(retry_after)}


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self.items: dict[LimitName, RateLimitItem] = {
            name: parse(getattr(settings, f"rate_limit_{name}")) for name in LIMIT_NAMES
        }
        self._memory_storage = MemoryStorage()
        self._memory: RateLimiter = SlidingWindowCounterRateLimiter(self._memory_storage)
        self._redis: RateLimiter | None = None
        self._redis_storage: RedisStorage | None = None
        if settings.redis_url:
            self._redis_storage = RedisStorage(
                "async+" + settings.redis_url,
                implementation="redispy",
                key_prefix=f"{settings.redis_prefix}limits",
                wrap_exceptions=True,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
            )
            self._redis = SlidingWindowCounterRateLimiter(self._redis_storage)
        self.breaker = Breaker("rate limits")
        self._once = parse("1/minute")

    async def first_in_a_while(self, key: str) -> bool:
        """True at most once a minute per key (this process): to record a refusal without
        writing an audit row for every request of a flood."""
        return await self._memory.hit(self._once, "once", key)

    async def _call(self, op: Callable[[RateLimiter], Awaitable[bool]]) -> tuple[bool, RateLimiter]:
        if self._redis is not None and self.breaker.closed:
            try:
                return await op(self._redis), self._redis
            except Exception as exc:  # any Redis trouble: count in memory meanwhile
                self.breaker.failed(exc)
        return await op(self._memory), self._memory

    async def _retry_after(self, limiter: RateLimiter, item: RateLimitItem, key: str) -> int:
        try:
            stats = await limiter.get_window_stats(item, key)
            return max(1, math.ceil(stats.reset_time - time.time()))
        except (StorageError, RedisError, OSError):
            return item.get_expiry()

    async def hit(self, name: LimitName, key: str) -> None:
        """Count one; raise RateLimited if the limit is already reached (then not counted)."""
        item = self.items[name]
        allowed, limiter = await self._call(lambda limiter: limiter.hit(item, key))
        if not allowed:
            raise RateLimited(await self._retry_after(limiter, item, key))

    async def check(self, name: LimitName, key: str) -> None:
        """Raise RateLimited if the limit is reached, without counting (failures-only limits)."""
        item = self.items[name]
        allowed, limiter = await self._call(lambda limiter: limiter.test(item, key))
        if not allowed:
            raise RateLimited(await self._retry_after(limiter, item, key))

    async def count(self, name: LimitName, key: str) -> None:
        """Count one without refusing (a failure, counted after the fact)."""
        item = self.items[name]
        await self._call(lambda limiter: limiter.hit(item, key))

    async def close(self) -> None:
        timer = getattr(self._memory_storage, "timer", None)  # its expiry task
        if timer is not None and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        if self._redis_storage is not None:
            client = getattr(self._redis_storage.bridge, "storage", None)
            with contextlib.suppress(AttributeError, RedisError, OSError):
                if client is not None:
                    await client.aclose()
