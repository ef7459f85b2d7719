"""The Redis connection shared by token revocation and rate limits, and a breaker around it.

Redis is an accelerator, never a single point of failure: when a call fails, callers fall back
(to the database for revocations, to this process's memory for rate limits) and the breaker
skips Redis for a few seconds, so that each request does not wait for a connection timeout.
"""

from __future__ import annotations

import logging
import time

from redis.asyncio import Redis

logger = logging.getLogger("relaypacs.redis")

# Short timeouts: a slow Redis must not make every request slow.
SOCKET_TIMEOUT = 0.5
RETRY_AFTER_FAILURE = 5.0


def connect(url: str) -> Redis:
    """A client (connections are made on first use: the gateway starts with Redis down)."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    return client


class Breaker:
    """Open for a few seconds after a failure: Redis is not tried while open."""

    def __init__(self, name: str, *, retry_after: float = RETRY_AFTER_FAILURE) -> None:
        self._name = name
        self._retry_after = retry_after
        self._open_until = 0.0
        self.failures = 0

    @property
    def closed(self) -> bool:
        return time.monotonic() >= self._open_until

    def failed(self, exc: BaseException) -> None:
        if self.closed:
            # The exception type only: a message may carry a URL with a password.
            logger.warning(
                "redis unavailable for %s (%s): using the fallback for %.0f s",
                self._name,
                type(exc).__name__,
                self._retry_after,
            )
        self.failures += 1
        self._open_until = time.monotonic() + self._retry_after
