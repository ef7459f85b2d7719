"""Readiness checks and the metrics read from the database at each scrape.

Each check runs with its own short timeout, all at once, so that `/health/ready` answers in
under a second even when a dependency hangs. The database and the object storage are required
(without them the gateway can take nothing); Redis and the PACS are not: without Redis the
gateway is slower (revocations read from the database, rate limits per process), without the
PACS studies wait in the queue. Taking every replica out of the load balancer for those would
turn a slowdown into an outage, so they make the answer `degraded`, still 200."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from relaypacs import __version__
from relaypacs.config import Settings
from relaypacs.db import Database
from relaypacs.forwarding.service import queue_state
from relaypacs.notifications.service import (
    email_outbox_counts,
    email_outbox_oldest_pending_age,
)
from relaypacs.ops import repository
from relaypacs.ops.errors import MetricsLoopbackOnly, MetricsTokenRequired
from relaypacs.ops.schemas import CheckResult, Readiness
from relaypacs.pacs.dicomweb import DicomWebClient
from relaypacs.redisconn import connect as connect_redis
from relaypacs.storage import ObjectStorage
from relaypacs.telemetry import render_metrics
from relaypacs.telemetry.metrics import (
    DATABASE_POOL,
    DEPENDENCY_UP,
    EMAIL_OUTBOX,
    EMAIL_OUTBOX_OLDEST_PENDING,
    FORWARD_BREAKER_OPEN,
    FORWARD_OLDEST_JOB_AGE,
    FORWARD_QUEUE_JOBS,
    SSE_CONNECTIONS,
    UPLOADS,
)
from relaypacs.uploads.service import count_uploads_by_status

logger = logging.getLogger("relaypacs.ops")

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(eq=False)
class HealthChecks:
    """What readiness checks besides the database and the storage: Redis (its own client) and
    each PACS target (a client each), built once by the lifespan."""

    timeout: float
    redis: Redis | None = None
    pacs: Sequence[DicomWebClient] = field(default_factory=tuple)

    @classmethod
    def build(cls, settings: Settings, storage: ObjectStorage) -> HealthChecks:
        return cls(
            timeout=settings.health_timeout_seconds,
            redis=connect_redis(settings.redis_url) if settings.redis_url else None,
            pacs=tuple(DicomWebClient(target, storage) for target in settings.pacs_targets),
        )

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
        for client in self.pacs:
            await client.aclose()


async def _timed(
    name: str, check: Callable[[], Awaitable[str | None]], *, within: float, required: bool
) -> tuple[str, CheckResult]:
    began = time.perf_counter()
    error: str | None
    try:
        async with asyncio.timeout(within):
            error = await check()
    except TimeoutError:
        error = f"no answer within {within:g} s"
    except Exception as exc:  # what went wrong is the answer; its type says enough
        error = type(exc).__name__
    DEPENDENCY_UP.labels(name).set(0 if error else 1)
    return name, CheckResult(
        ok=error is None,
        required=required,
        seconds=round(time.perf_counter() - began, 4),
        error=error,
    )


async def check_readiness(
    *, db: Database, storage: ObjectStorage, checks: HealthChecks
) -> Readiness:
    async def database() -> None:
        async with db.read_sessionmaker() as session, session.begin():
            await repository.ping(session)

    async def object_storage() -> None:
        await storage.check()

    timeout = checks.timeout
    probes = [
        _timed("database", _none(database), within=timeout, required=True),
        _timed("storage", _none(object_storage), within=timeout, required=True),
    ]
    if checks.redis is not None:
        redis = checks.redis

        async def ping_redis() -> None:
            await redis.ping()

        probes.append(_timed("redis", _none(ping_redis), within=timeout, required=False))
    for client in checks.pacs:
        probes.append(
            _timed(f"pacs:{client.target.name}", client.probe, within=timeout, required=False)
        )
    results = dict(await asyncio.gather(*probes))
    if any(not r.ok and r.required for r in results.values()):
        status = "unready"
    elif any(not r.ok for r in results.values()):
        status = "degraded"
    else:
        status = "ready"
    return Readiness(status=status, version=__version__, checks=results)


def _none(check: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[str | None]]:
    async def run() -> str | None:
        await check()
        return None

    return run


def check_metrics_access(
    settings: Settings, *, client_host: str | None, authorization: str | None
) -> None:
    """The token when one is configured (compared in constant time), else loopback only."""
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        if authorization is None or not secrets.compare_digest(authorization.encode(), expected):
            raise MetricsTokenRequired()
        return
    if client_host not in LOOPBACK:
        raise MetricsLoopbackOnly()


async def scrape_metrics(
    *, db: Database, within: float, breakers: Mapping[str, str], sse_streams: int
) -> tuple[bytes, str]:
    """The metrics, with the gauges read from the database first (if it answers in time: a
    scrape must not hang on it, and the other metrics matter most when it is down), and the
    state of this process's breakers (`breakers`: target -> state)."""
    for target, state in breakers.items():
        FORWARD_BREAKER_OPEN.labels(target).set(0 if state == "closed" else 1)
    SSE_CONNECTIONS.set(sse_streams)
    pool = db.engine.pool
    checked_out, checked_in = getattr(pool, "checkedout", None), getattr(pool, "checkedin", None)
    if callable(checked_out) and callable(checked_in):  # a queue pool (not SQLite's own)
        DATABASE_POOL.labels("in_use").set(checked_out())
        DATABASE_POOL.labels("idle").set(checked_in())

    async def read_gauges() -> None:
        async with db.read_sessionmaker() as session, session.begin():
            counts = await count_uploads_by_status(session)
            queue = await queue_state(session)
            emails = await email_outbox_counts(session)
            oldest_email = await email_outbox_oldest_pending_age(session)
        for status, count in counts.items():
            UPLOADS.labels(status.value).set(count)
        FORWARD_QUEUE_JOBS.set(queue.jobs)
        FORWARD_OLDEST_JOB_AGE.set(queue.oldest_age_seconds)
        for state in ("pending", "failed"):
            EMAIL_OUTBOX.labels(state).set(emails.get(state, 0))
        EMAIL_OUTBOX_OLDEST_PENDING.set(oldest_email)

    try:
        async with asyncio.timeout(within):
            await read_gauges()
    except Exception as exc:
        logger.warning("metrics: the database's gauges were not read (%s)", type(exc).__name__)
    return await asyncio.to_thread(render_metrics)
