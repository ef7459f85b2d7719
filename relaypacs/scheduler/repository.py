"""Every query of `scheduled_job`. Each change is one UPDATE whose WHERE says what it expects
(a compare-and-set): atomic on PostgreSQL and SQLite alike, with no lock held between two
statements."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy import CursorResult, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.scheduler.models import ScheduledJob


async def ensure_jobs(session: AsyncSession, due: Mapping[str, dt.datetime]) -> None:
    """A row for each job that has none yet (first due at `due[name]`); existing rows are left
    alone."""
    if not due:
        return
    rows = [{"name": name, "lease_until": at} for name, at in due.items()]
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(pg_insert(ScheduledJob).values(rows).on_conflict_do_nothing())
    else:
        await session.execute(sqlite_insert(ScheduledJob).values(rows).on_conflict_do_nothing())


async def claim(
    session: AsyncSession, name: str, *, owner: str, now: dt.datetime, lease: dt.timedelta
) -> bool:
    """Take the job's lease if it has run out (`lease_until` passed): True for the one replica
    whose UPDATE matched."""
    result = await session.execute(
        update(ScheduledJob)
        .where(ScheduledJob.name == name, ScheduledJob.lease_until <= now)
        .values(lease_owner=owner, lease_until=now + lease, last_started=now)
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


async def renew(
    session: AsyncSession, name: str, *, owner: str, started: dt.datetime, until: dt.datetime
) -> bool:
    """Extend the lease of a run still going; False if it is no longer ours (it ran out and
    another replica took it)."""
    result = await session.execute(
        update(ScheduledJob)
        .where(
            ScheduledJob.name == name,
            ScheduledJob.lease_owner == owner,
            ScheduledJob.last_started == started,
        )
        .values(lease_until=until)
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


async def finish(
    session: AsyncSession,
    name: str,
    *,
    owner: str,
    started: dt.datetime,
    now: dt.datetime,
    next_due: dt.datetime,
    outcome: str,
) -> bool:
    """Record the run's end and hold the job until `next_due` (fenced: a run whose lease was
    taken over records nothing)."""
    result = await session.execute(
        update(ScheduledJob)
        .where(
            ScheduledJob.name == name,
            ScheduledJob.lease_owner == owner,
            ScheduledJob.last_started == started,
        )
        .values(lease_until=next_due, last_finished=now, last_outcome=outcome)
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


async def lease_until(session: AsyncSession, name: str) -> dt.datetime | None:
    return await session.scalar(select(ScheduledJob.lease_until).where(ScheduledJob.name == name))


async def jobs(session: AsyncSession) -> Sequence[ScheduledJob]:
    return (await session.scalars(select(ScheduledJob).order_by(ScheduledJob.name))).all()


def _changed(result: object) -> bool:
    assert isinstance(result, CursorResult)
    return result.rowcount == 1
