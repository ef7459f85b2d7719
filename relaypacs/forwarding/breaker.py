"""A circuit breaker per PACS target, and the retry schedule."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class CircuitBreaker:
    """Opens after `failures` consecutive failed requests; after `reset_seconds` it lets one
    request through (half-open): its success closes the breaker, its failure opens it again.

    While open, no request is sent to the target and its uploads stay queued.
    """

    failures: int = 5
    reset_seconds: float = 60.0
    clock: Callable[[], float] = time.monotonic
    consecutive: int = 0
    opened_at: float | None = None
    probing: bool = field(default=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """May a request be sent now? In half-open state only one at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.probing:
            self.probing = True
            return True
        return False

    def would_allow(self) -> bool:
        """Like allow(), without taking the half-open probe."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.probing)

    def record_success(self) -> None:
        self.consecutive = 0
        self.opened_at = None
        self.probing = False

    def record_failure(self) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.failures:
            self.opened_at = self.clock()
        self.probing = False

    def seconds_until_retry(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.reset_seconds - (self.clock() - self.opened_at))


def retry_delay(
    attempt: int,
    delays: Sequence[float],
    interval: float,
    *,
    jitter: float = 0.2,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds before retry number `attempt` (1-based): delays[0], delays[1], ... then
    `interval` for every later one; each spread by +-`jitter` so that replicas and uploads do
    not retry in lockstep."""
    base = delays[attempt - 1] if 0 < attempt <= len(delays) else interval
    return base * (1 - jitter + 2 * jitter * rng())
