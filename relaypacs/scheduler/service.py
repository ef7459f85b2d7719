"""The scheduler: a loop per job on every replica, and a lease row per job in the database so
that exactly one replica runs each job per period.

Why our own loop rather than APScheduler: APScheduler 3 decides *when* a job runs in each
process, but not *which* replica runs it (its job stores do not lease a run), so the lease row
was needed either way; what remains (sleep until the lease runs out, try to take it, run,
renew while running, record the outcome) is some eighty lines with no thread pool, executor or
misfire policy of another library to reason about, on SQLite and PostgreSQL alike.

A run: the replica whose UPDATE moves `lease_until` from the past into the future runs the job
(repository.claim), renewing the lease every third of it while it runs. When the job ends,
`lease_until` becomes the start of the next period (its start + the period), so no replica runs
it again within the period; a failure is logged (its type only: an error's message may carry
patient data), counted, and tried again next period. A replica that dies while running leaves
the lease to run out, and another takes the job over then. Replicas' clocks are assumed to
agree within a small fraction of the periods (NTP), as the forwarder's leases assume.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.db import utcnow
from relaypacs.scheduler import repository
from relaypacs.scheduler.models import ScheduledJob
from relaypacs.telemetry.metrics import SCHEDULED_RUNS

logger = logging.getLogger("relaypacs.scheduler")

# While a job runs: the start its lease was taken with (the run's identity in the lease row).
RUN_STARTED: contextvars.ContextVar[dt.datetime] = contextvars.ContextVar("scheduled_run")


# A new job's first run comes at the latest this long after the first start (a job with a
# period of a day still runs on the day the gateway is installed).
FIRST_RUN_WITHIN = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class Job:
    name: str  # the lease row's key and the metric's `job` label
    period: float  # seconds between the starts of two runs
    run: Callable[[], Awaitable[object]]


def replica_name() -> str:
    """This process, as the lease rows name it (host, pid and a random part)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(eq=False)
class Scheduler:
    sessionmaker: async_sessionmaker[AsyncSession]
    lease_seconds: float = 60.0  # a run's hold on its job, renewed every third while it runs
    poll_seconds: float = 30.0  # at most this long between two looks at a job's lease
    owner: str = field(default_factory=replica_name)
    jobs: list[Job] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False, repr=False)

    def add(self, name: str, period: float, run: Callable[[], Awaitable[object]]) -> None:
        """Register a job (before start): `run` is called once per `period` seconds, on one
        replica."""
        if any(job.name == name for job in self.jobs):
            raise ValueError(f"the job {name!r} is registered twice")
        self.jobs.append(Job(name, period, run))

    async def start(self) -> None:
        """The rows of new jobs, then a loop per job. A new job is first due one period from
        now (capped at FIRST_RUN_WITHIN): a gateway that starts is busy enough, and on SQLite
        every job at once at start would hold the one writer's lock in turn while the first
        requests come."""
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            await repository.ensure_jobs(
                session,
                {
                    job.name: now + min(dt.timedelta(seconds=job.period), FIRST_RUN_WITHIN)
                    for job in self.jobs
                },
            )
        self._tasks = [
            asyncio.create_task(self._loop(job), name=f"scheduled:{job.name}") for job in self.jobs
        ]

    async def stop(self) -> None:
        """Cancel the loops; a run under way stops, its lease runs out and another replica runs
        the job then."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def rows(self) -> Sequence[ScheduledJob]:
        async with self.sessionmaker() as session, session.begin():
            return await repository.jobs(session)

    async def _loop(self, job: Job) -> None:
        while True:
            try:
                await self.run_if_due(job)
                async with self.sessionmaker() as session, session.begin():
                    until = await repository.lease_until(session, job.name)
            except Exception as error:  # the database unreachable: look again later
                logger.warning("scheduler: the lease of %s: %s", job.name, type(error).__name__)
                until = None
            wait = self.poll_seconds
            if until is not None:
                wait = min(wait, max((until - utcnow()).total_seconds(), 0.0))
            await asyncio.sleep(wait + 0.01)

    async def run_if_due(self, job: Job) -> bool:
        """Run the job if its lease has run out and this replica takes it; whether it ran."""
        lease = dt.timedelta(seconds=self.lease_seconds)
        async with self.sessionmaker() as session, session.begin():
            started = utcnow()  # once the transaction has begun (SQLite: its lock is held)
            if not await repository.claim(
                session, job.name, owner=self.owner, now=started, lease=lease
            ):
                return False
        renewal = asyncio.create_task(self._renew(job, started, lease))
        token = RUN_STARTED.set(started)
        try:
            await job.run()
        except Exception as error:
            outcome = "failed"
            logger.warning(
                "scheduled job %s failed (%s); it runs again next period",
                job.name,
                type(error).__name__,
            )
        else:
            outcome = "ok"
        finally:
            RUN_STARTED.reset(token)
            renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewal
        SCHEDULED_RUNS.labels(job.name, outcome).inc()
        async with self.sessionmaker() as session, session.begin():
            await repository.finish(
                session,
                job.name,
                owner=self.owner,
                started=started,
                now=utcnow(),
                next_due=started + dt.timedelta(seconds=job.period),
                outcome=outcome,
            )
        return True

    async def _renew(self, job: Job, started: dt.datetime, lease: dt.timedelta) -> None:
        while True:
            await asyncio.sleep(lease.total_seconds() / 3)
            try:
                async with self.sessionmaker() as session, session.begin():
                    held = await repository.renew(
                        session, job.name, owner=self.owner, started=started, until=utcnow() + lease
                    )
            except Exception as error:  # try again at the next third
                logger.warning("scheduler: renewing %s: %s", job.name, type(error).__name__)
                continue
            if not held:
                logger.warning("scheduler: the lease of %s was taken over", job.name)
                return
