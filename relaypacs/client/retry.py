"""When and how long to wait before trying a request again."""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from dataclasses import dataclass

import httpx

__all__ = ["RETRYABLE_STATUS", "RetryPolicy", "parse_retry_after"]

# 408 request timeout, 425 too early, 429 rate limited, and the server-side failures.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``retries`` is the number of retries per request."""

    retries: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    # A Retry-After longer than this is shortened to it.
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        backoff = min(self.max_delay, self.base_delay * 2.0 ** (attempt - 1))
        # "Equal jitter": never zero, and parallel workers do not retry in lockstep.
        jittered = backoff / 2 + random.uniform(0, backoff / 2)  # noqa: S311 - not crypto
        if retry_after is not None:
            return max(min(retry_after, self.max_retry_after), 0.0) + random.uniform(0, 0.25)  # noqa: S311
        return jittered


def parse_retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), else None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())
