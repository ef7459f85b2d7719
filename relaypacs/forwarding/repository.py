"""Every query of the forward_job table: enqueue, claim with a lease, fence by the lease token,
schedule a retry, settle, requeue, cancel, summarise.

A job's lease is taken by bumping its lease_token; every later write of the worker that holds
it goes through `fence` (or the fenced batch of `BatchRecorder`), which matches that token: a
worker whose lease moved on writes nothing. Functions taking a session run in the caller's
transaction; those taking a job (`ForwardJob`, as `renew` returned it) change it in the
caller's session, written when it flushes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Select,
    Update,
    bindparam,
    case,
    func,
    inspect,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from relaypacs.db import sqlite_write_lock, utcnow
from relaypacs.forwarding.errors import LeaseLost
from relaypacs.forwarding.models import DeliveredInstance, ForwardJob, JobKind, JobStatus
from relaypacs.forwarding.source import ForwardCounts


@dataclass(frozen=True)
class Claim:
    """A job whose lease a worker holds, and the token that fences its writes."""

    job_id: uuid.UUID
    token: int
    upload_id: uuid.UUID
    target: str
    kind: JobKind = JobKind.STUDY
    request_id: str | None = None  # of the request that queued the job


# --- jobs of an upload (the forwarding service's use cases) ----------------------------------


def add_job(
    session: AsyncSession,
    *,
    upload_id: uuid.UUID,
    target: str,
    kind: JobKind = JobKind.STUDY,
    request_id: str | None = None,
    parked: bool = False,
) -> None:
    job = ForwardJob(upload_id=upload_id, target=target, kind=kind, request_id=request_id)
    if parked:  # nothing worth a request yet: due when woken (see wake_job)
        job.next_attempt_at = utcnow() + PARKED_FOR
    session.add(job)


# A pipelined job (its upload still uploading) with nothing to send now waits "parked": due
# this far ahead, until the upload domain wakes it (more instances, or the upload completed).
PARKED_FOR = dt.timedelta(days=3650)
_PARKED_BEYOND = dt.timedelta(days=365)  # a due time this far ahead is a parked job's


def _parked(now: dt.datetime) -> Any:
    return ForwardJob.next_attempt_at > now + _PARKED_BEYOND


async def wake_job(session: AsyncSession, *, upload_id: uuid.UUID, target: str) -> bool:
    """Make the upload's queued job due now if it is parked (a job waiting for its retry
    keeps its time); False if the upload has no job for `target` (none queued).

    The statement matches (and on PostgreSQL locks) the queued job's row whether parked or
    not: a worker that decides to park it takes the same row lock first and reads the
    upload's state after it, so the caller's writes in this transaction are either seen by
    that worker or followed by this wake (re-evaluated on the parked row)."""
    now = utcnow()
    result = cast(
        CursorResult[Any],
        await session.execute(
            update(ForwardJob)
            .where(
                ForwardJob.upload_id == upload_id,
                ForwardJob.target == target,
                ForwardJob.kind == JobKind.STUDY,
                ForwardJob.status == JobStatus.QUEUED,
            )
            .values(
                next_attempt_at=case(
                    (_parked(now), literal(now, ForwardJob.next_attempt_at.type)),
                    else_=ForwardJob.next_attempt_at,
                ),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        ),
    )
    return bool(result.rowcount)


async def has_job(session: AsyncSession, *, upload_id: uuid.UUID, target: str) -> bool:
    found = await session.scalar(
        select(ForwardJob.id).where(
            ForwardJob.upload_id == upload_id,
            ForwardJob.target == target,
            ForwardJob.kind == JobKind.STUDY,
        )
    )
    return found is not None


def park(job: ForwardJob) -> None:
    """Release the lease: nothing to send until the upload domain wakes the job."""
    job.next_attempt_at = utcnow() + PARKED_FOR
    job.lease_owner = None
    job.lease_until = None


class FirstJob(NamedTuple):
    target: str
    status: JobStatus
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None


@functools.cache
def _first_job_statement() -> Select[Any]:
    """Made once (bound parameters): the status poll reads it every time. On first use, when
    every model is mapped (a foreign key column takes its type from the column it refers to)."""
    mapper = inspect(ForwardJob)
    table = ForwardJob.__table__
    return (
        select(*(mapper.columns[name] for name in FirstJob._fields))
        .where(table.c.upload_id == bindparam("upload_id"), table.c.kind == JobKind.STUDY)
        .order_by(table.c.created_at)
        .limit(1)
    )


def first_job(session: Session, upload_id: uuid.UUID) -> FirstJob | None:
    """The columns of the upload's first study job (synchronous: a read in one call, or
    `run_sync`)."""
    row = session.execute(_first_job_statement(), {"upload_id": upload_id}).first()
    return FirstJob(*tuple(row)) if row is not None else None


async def targets_of(
    session: AsyncSession, upload_ids: Sequence[uuid.UUID], *, delivered: bool = False
) -> dict[uuid.UUID, str]:
    """Each upload's target: its first study job's, for those that have one (`delivered`:
    its first finished study job's, for those delivered)."""
    found: dict[uuid.UUID, str] = {}
    ids = list(upload_ids)
    for start in range(0, len(ids), _IN_LIST):
        query = select(ForwardJob.upload_id, ForwardJob.target).where(
            ForwardJob.upload_id.in_(ids[start : start + _IN_LIST]),
            ForwardJob.kind == JobKind.STUDY,
        )
        if delivered:
            query = query.where(ForwardJob.status == JobStatus.DONE)
        for upload_id, target in await session.execute(query.order_by(ForwardJob.created_at)):
            found.setdefault(upload_id, target)
    return found


async def job_of_upload(
    session: AsyncSession, upload_id: uuid.UUID, kind: JobKind = JobKind.STUDY
) -> ForwardJob | None:
    return await session.scalar(
        select(ForwardJob)
        .where(ForwardJob.upload_id == upload_id, ForwardJob.kind == kind)
        .order_by(ForwardJob.created_at)
        .limit(1)
    )


async def job_for(
    session: AsyncSession, *, upload_id: uuid.UUID, target: str, kind: JobKind
) -> ForwardJob | None:
    return await session.scalar(
        select(ForwardJob).where(
            ForwardJob.upload_id == upload_id, ForwardJob.target == target, ForwardJob.kind == kind
        )
    )


def make_due_again(job: ForwardJob) -> None:
    """Due now with fresh attempts; a new lease token fences off any worker still holding the
    old lease."""
    job.status = JobStatus.QUEUED
    job.attempts = 0
    job.next_attempt_at = utcnow()
    job.lease_owner = None
    job.lease_until = None
    job.lease_token += 1
    job.finished_at = None


async def cancel_jobs(session: AsyncSession, upload_id: uuid.UUID) -> None:
    """Cancel the upload's jobs, fencing off any worker that holds a lease on one."""
    await session.execute(
        update(ForwardJob)
        .where(ForwardJob.upload_id == upload_id)
        .values(
            status=JobStatus.CANCELLED,
            lease_token=ForwardJob.lease_token + 1,
            lease_owner=None,
            lease_until=None,
            finished_at=utcnow(),
        )
    )


def retrying_upload_ids() -> Select[uuid.UUID]:
    """The ids of uploads whose job is queued again after a failed attempt (a subquery)."""
    return select(ForwardJob.upload_id).where(
        ForwardJob.status == JobStatus.QUEUED,
        ForwardJob.attempts > 0,
        ForwardJob.kind == JobKind.STUDY,
    )


# --- the worker's lease ----------------------------------------------------------------------


async def claim_due(
    session: AsyncSession, *, targets: Sequence[str], owner: str, lease: dt.timedelta
) -> Claim | None:
    """Take the lease of the job due first for one of `targets` (FOR UPDATE SKIP LOCKED: the
    workers of other replicas skip it rather than wait)."""
    now = utcnow()
    job = await session.scalar(
        select(ForwardJob)
        .where(
            ForwardJob.status == JobStatus.QUEUED,
            ForwardJob.next_attempt_at <= now,
            (ForwardJob.lease_until.is_(None)) | (ForwardJob.lease_until < now),
            ForwardJob.target.in_(targets),
        )
        .order_by(ForwardJob.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return await _lease(session, job, owner=owner, until=now + lease)


async def _lease(
    session: AsyncSession, job: ForwardJob | None, *, owner: str, until: dt.datetime
) -> Claim | None:
    """The job's lease taken (a new fencing token), or None without a job."""
    if job is None:
        return None
    job.lease_owner = owner
    job.lease_until = until
    job.lease_token += 1
    await session.flush()
    return Claim(job.id, job.lease_token, job.upload_id, job.target, job.kind, job.request_id)


async def claim_removed_target(
    session: AsyncSession,
    *,
    targets: Sequence[str],
    owner: str,
    lease: dt.timedelta,
    quiet_for: dt.timedelta,
) -> Claim | None:
    """Take the lease of a due job whose target is not one of `targets` (the configured names)
    and that no worker has touched for `quiet_for` (while replicas' settings differ, during a
    rolling change, a replica that knows the target has claimed it meanwhile)."""
    now = utcnow()
    quiet_since = now - quiet_for
    job = await session.scalar(
        select(ForwardJob)
        .where(
            ForwardJob.status == JobStatus.QUEUED,
            ForwardJob.next_attempt_at <= quiet_since,
            ForwardJob.updated_at <= quiet_since,
            (ForwardJob.lease_until.is_(None)) | (ForwardJob.lease_until < now),
            ForwardJob.target.not_in(targets),
        )
        .order_by(ForwardJob.next_attempt_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return await _lease(session, job, owner=owner, until=now + lease)


def mark_abandoned(job: ForwardJob, *, at: dt.datetime, reason: str) -> None:
    """Failed for good without a PACS's answer (its target was removed): nothing more to send;
    the reason is kept."""
    mark_done(job, at=at)
    job.last_error = reason[:500]


def retarget(job: ForwardJob, target: str) -> None:
    """The job goes to another target (its own was removed), due now with fresh attempts."""
    job.target = target
    job.sent_count = job.confirmed_count = job.failed_count = 0
    make_due_again(job)


def _fence(claim: Claim, lease: dt.timedelta, **values: Any) -> Update:
    """Extend the lease (and set `values`) if the job is still the claim's; on PostgreSQL it
    also locks the job's row until the transaction ends."""
    now = utcnow()
    return (
        update(ForwardJob)
        .where(ForwardJob.id == claim.job_id, ForwardJob.lease_token == claim.token)
        .values(lease_until=now + lease, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )


async def fence(session: AsyncSession, claim: Claim, lease: dt.timedelta) -> None:
    """Fence the writes of the session's transaction by the claim's lease token (and extend
    the lease); raise LeaseLost if the job is no longer ours."""
    result = cast(CursorResult[Any], await session.execute(_fence(claim, lease)))
    if not result.rowcount:
        raise LeaseLost()


async def renew(session: AsyncSession, claim: Claim, lease: dt.timedelta) -> ForwardJob:
    """:func:`fence`, then the job's row as it is now."""
    await fence(session, claim, lease)
    job = await session.get(ForwardJob, claim.job_id, populate_existing=True)
    assert job is not None
    return job


def _fence_batch(connection: Connection, claim: Claim, lease: dt.timedelta) -> None:
    """:func:`fence` for a STOW-RS batch's answers: it also counts the request."""
    fenced = connection.execute(_fence(claim, lease, stow_requests=ForwardJob.stow_requests + 1))
    if not fenced.rowcount:
        raise LeaseLost()


def mark_cancelled(job: ForwardJob) -> None:
    """The job's upload was cancelled: nothing more to send."""
    job.status = JobStatus.CANCELLED
    job.finished_at = utcnow()


def set_counts(job: ForwardJob, counts: ForwardCounts) -> None:
    job.confirmed_count = counts.confirmed
    job.failed_count = counts.failed
    job.sent_count = counts.confirmed + counts.sent


def schedule_retry(
    job: ForwardJob, *, attempts: int, next_attempt_at: dt.datetime, reason: str
) -> None:
    """Release the lease; the job is due again at `next_attempt_at`."""
    job.attempts = attempts
    job.next_attempt_at = next_attempt_at
    job.last_error = reason[:500]
    job.lease_owner = None
    job.lease_until = None


def mark_done(job: ForwardJob, *, at: dt.datetime) -> None:
    """Delivered, or failed for good: nothing more to send."""
    job.status = JobStatus.DONE
    job.finished_at = at
    job.lease_owner = None
    job.lease_until = None
    job.last_error = None


# --- a batch's answers: one fenced transaction, in as few hops as the database allows --------


class BatchRecorder(Protocol):
    async def record(
        self, claim: Claim, lease: dt.timedelta, answers: Callable[[Connection], None]
    ) -> None:
        """In one transaction: fence the job by the claim's lease token and count the STOW-RS
        request (raise LeaseLost if the job is no longer ours), then write `answers`."""
        ...


class _SessionBatchRecorder:
    """A writing session; `answers` runs on its connection (`run_sync`: asyncpg needs no
    thread)."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker

    async def record(
        self, claim: Claim, lease: dt.timedelta, answers: Callable[[Connection], None]
    ) -> None:
        def in_transaction(connection: Connection) -> None:
            _fence_batch(connection, claim, lease)
            answers(connection)

        async with self._sessionmaker() as session, session.begin():
            connection = await session.connection()
            await connection.run_sync(in_transaction)


class _SqliteBatchRecorder:
    """SQLite: the whole transaction is one thread call on the synchronous engine (through
    aiosqlite it was a dozen hops between threads, 30 times for a CT series), taking its turn
    on the process's write lock like every writing session."""

    def __init__(self, engine: AsyncEngine, sync_engine: Engine) -> None:
        self._engine = engine
        self._sync_engine = sync_engine

    async def record(
        self, claim: Claim, lease: dt.timedelta, answers: Callable[[Connection], None]
    ) -> None:
        def in_thread() -> None:
            with self._sync_engine.begin() as connection:
                _fence_batch(connection, claim, lease)
                answers(connection)

        async with sqlite_write_lock(self._engine):
            await asyncio.to_thread(in_thread)


def batch_recorder(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    engine: AsyncEngine | None = None,
    sync_engine: Engine | None = None,
) -> BatchRecorder:
    """The recorder for this database, chosen once: SQLite's when its synchronous engine is
    given (with the async engine, whose write lock it shares), else the session's."""
    if engine is not None and sync_engine is not None:
        return _SqliteBatchRecorder(engine, sync_engine)
    return _SessionBatchRecorder(sessionmaker)


# --- what each target holds, as delivered by the gateway -------------------------------------

_IN_LIST = 1000  # SOP Instance UIDs per IN (...) list: far below every database's limit


async def delivered_instances(
    session: AsyncSession, target: str, sop_instance_uids: Sequence[str]
) -> list[DeliveredInstance]:
    """The registry's rows of these SOP Instance UIDs at `target`."""
    uids = sorted(set(sop_instance_uids))
    found: list[DeliveredInstance] = []
    for start in range(0, len(uids), _IN_LIST):
        rows = await session.scalars(
            select(DeliveredInstance).where(
                DeliveredInstance.target == target,
                DeliveredInstance.sop_instance_uid.in_(uids[start : start + _IN_LIST]),
            )
        )
        found.extend(rows)
    return found


@dataclass(frozen=True)
class Delivered:
    """An instance the PACS confirmed, as the registry records it."""

    sop_instance_uid: str
    sha256: str
    md5: str | None
    content_verified: bool  # the PACS said it holds these very bytes (its MD5, or WADO-RS)


async def register_delivered(
    session: AsyncSession, *, target: str, upload_id: uuid.UUID, instances: Sequence[Delivered]
) -> set[str]:
    """Record what the target now holds; returns the SOP Instance UIDs it holds with other
    bytes, as delivered earlier (a conflict: never "confirmed"). An instance whose content the
    PACS itself vouched for replaces an older record that says otherwise (what the PACS holds
    changed: the record follows it).

    Concurrent settles of the same UID take turns on the row (insert-or-nothing, then read):
    the first one's content is the record."""
    if not instances:
        return set()
    values = [
        {
            "target": target,
            "sop_instance_uid": i.sop_instance_uid,
            "sha256": i.sha256,
            "md5": i.md5,
            "upload_id": upload_id,
            "delivered_at": utcnow(),
        }
        for i in instances
    ]
    insert_ = _insert_for(session)
    for start in range(0, len(values), _IN_LIST):
        await session.execute(
            insert_(DeliveredInstance).on_conflict_do_nothing(),
            values[start : start + _IN_LIST],
        )
    mine = {i.sop_instance_uid: i for i in instances}
    conflicts: set[str] = set()
    for row in await delivered_instances(session, target, list(mine)):
        ours = mine[row.sop_instance_uid]
        if row.sha256 == ours.sha256:
            continue
        if ours.content_verified:
            row.sha256, row.md5, row.upload_id = ours.sha256, ours.md5, upload_id
            row.delivered_at = utcnow()
        else:
            conflicts.add(row.sop_instance_uid)
    return conflicts


def _insert_for(session: AsyncSession) -> Any:
    """INSERT with ON CONFLICT for the session's database (SQLite or PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert
    return sqlite_insert


async def unfinished_jobs(session: AsyncSession) -> tuple[int, dt.datetime | None]:
    """How many jobs are not finished, and when the oldest of them was created (not counting
    parked ones: their upload is still uploading, nothing is waiting for the PACS)."""
    row = (
        await session.execute(
            select(func.count(), func.min(ForwardJob.created_at)).where(
                ForwardJob.status == JobStatus.QUEUED, ~_parked(utcnow())
            )
        )
    ).one()
    return int(row[0]), row[1]


# --- each target's queue, as an administrator sees it ----------------------------------------


@dataclass(frozen=True)
class TargetQueueRow:
    target: str
    queued: int  # jobs not finished
    retrying: int  # of those, queued again after a failed attempt
    oldest_created_at: dt.datetime | None  # the oldest unfinished job's creation


async def target_queues(session: AsyncSession) -> list[TargetQueueRow]:
    """Per target with unfinished jobs: how many, how many retrying, since when."""
    rows = await session.execute(
        select(
            ForwardJob.target,
            func.count(),
            func.count().filter(ForwardJob.attempts > 0),
            func.min(ForwardJob.created_at),
        )
        .where(ForwardJob.status == JobStatus.QUEUED)
        .group_by(ForwardJob.target)
    )
    return [TargetQueueRow(t, int(n), int(r), oldest) for t, n, r, oldest in rows]


async def last_deliveries(session: AsyncSession) -> dict[str, dt.datetime]:
    """Per target, when its last study was delivered (every instance confirmed)."""
    rows = await session.execute(
        select(ForwardJob.target, func.max(ForwardJob.finished_at))
        .where(ForwardJob.status == JobStatus.DONE, ForwardJob.failed_count == 0)
        .group_by(ForwardJob.target)
    )
    return {target: at for target, at in rows if at is not None}


async def last_attempted_job(session: AsyncSession, target: str) -> ForwardJob | None:
    """The target's job attempted last (its last write: a retry scheduled, or settled)."""
    return await session.scalar(
        select(ForwardJob)
        .where(ForwardJob.target == target, ForwardJob.status != JobStatus.CANCELLED)
        .where((ForwardJob.attempts > 0) | (ForwardJob.status == JobStatus.DONE))
        .order_by(ForwardJob.updated_at.desc())
        .limit(1)
    )
