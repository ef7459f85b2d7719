"""The forwarding queue's use cases for other domains: every transition of a forward job that is
not the worker's own (enqueue, requeue, cancel) and the job's summary for an upload's view.

The worker (relaypacs/forwarding/worker.py) claims, leases and settles jobs; everything else
asks this module. Both reach the forward_job table through relaypacs/forwarding/repository.py.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relaypacs.db import utcnow
from relaypacs.forwarding import repository
from relaypacs.forwarding.models import JobKind, JobStatus
from relaypacs.telemetry import REQUEST_ID


@dataclass(frozen=True)
class JobSummary:
    """Where an upload's forwarding stands (the first job of the upload)."""

    target: str
    status: JobStatus
    attempts: int
    next_attempt_at: dt.datetime | None  # only while queued
    last_error: str | None


@dataclass(frozen=True)
class DeliveredContent:
    """What the gateway delivered to a target under one SOP Instance UID."""

    sha256: str
    md5: str | None
    upload_id: uuid.UUID
    delivered_at: dt.datetime


async def delivered_contents(
    session: AsyncSession, *, target: str, sop_instance_uids: Sequence[str]
) -> dict[str, DeliveredContent]:
    """Of these SOP Instance UIDs, those the gateway delivered to `target` (and the PACS
    confirmed), with the content delivered."""
    rows = await repository.delivered_instances(session, target, sop_instance_uids)
    return {
        row.sop_instance_uid: DeliveredContent(row.sha256, row.md5, row.upload_id, row.delivered_at)
        for row in rows
    }


def enqueue(session: AsyncSession, *, upload_id: uuid.UUID, target: str) -> None:
    """The outbox: call it in the transaction that accepts the upload, so that the job exists
    if and only if that transaction commits. The job keeps the id of the request this runs in
    (the `complete`), which the worker logs under and sends to the PACS."""
    repository.add_job(session, upload_id=upload_id, target=target, request_id=_request_id())


def _request_id() -> str | None:
    request_id = REQUEST_ID.get()
    return request_id[:64] if request_id is not None else None


async def enqueue_report(session: AsyncSession, *, upload_id: uuid.UUID, target: str) -> None:
    """The outbox of a report's write-back: the upload's `report` job for `target` is due now
    (written with the transaction that signs or amends the report); one job per upload and
    target carries every signed version not yet held by the PACS."""
    await session.flush()
    job = await repository.job_for(session, upload_id=upload_id, target=target, kind=JobKind.REPORT)
    if job is None:
        repository.add_job(
            session,
            upload_id=upload_id,
            target=target,
            kind=JobKind.REPORT,
            request_id=_request_id(),
        )
    else:
        repository.make_due_again(job)


async def delivered_targets(
    session: AsyncSession, upload_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The PACS target each of these uploads was delivered to (absent: not delivered)."""
    return await repository.targets_of(session, upload_ids, delivered=True)


async def enqueue_or_wake(session: AsyncSession, *, upload_id: uuid.UUID, target: str) -> None:
    """:func:`enqueue`, for an upload whose job may exist already (pipelined: opened while the
    study was uploading by :func:`send_while_uploading`): that job is made due now."""
    if not await repository.has_job(session, upload_id=upload_id, target=target):
        repository.add_job(session, upload_id=upload_id, target=target, request_id=_request_id())
    else:
        await repository.wake_job(session, upload_id=upload_id, target=target)


async def send_while_uploading(
    session: AsyncSession, *, upload_id: uuid.UUID, target: str, due: bool = True
) -> bool:
    """Pipelined relay: the upload has instances to send while it is still uploading, written
    in this transaction. Its job is opened (the outbox: it exists if and only if this
    transaction commits), or woken if it waits parked; with `due` false (not enough for a
    request yet) it is opened parked, or left as it is. Returns True when the job was opened
    now. Nothing happens to a job that is no longer queued (the upload was cancelled)."""
    if await repository.has_job(session, upload_id=upload_id, target=target):
        if due:
            await repository.wake_job(session, upload_id=upload_id, target=target)
        return False
    repository.add_job(
        session, upload_id=upload_id, target=target, parked=not due, request_id=_request_id()
    )
    return True


def job_summary(session: Session, upload_id: uuid.UUID) -> JobSummary | None:
    """Synchronous (a read in one call, or `AsyncSession.run_sync`)."""
    job = repository.first_job(session, upload_id)
    if job is None:
        return None
    return JobSummary(
        target=job.target,
        status=job.status,
        attempts=job.attempts,
        next_attempt_at=job.next_attempt_at if job.status == JobStatus.QUEUED else None,
        last_error=job.last_error,
    )


async def targets_of(
    session: AsyncSession, upload_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The target each of these uploads was queued for (absent: never queued)."""
    return await repository.targets_of(session, upload_ids)


TARGET_REMOVED = "target_removed"


@dataclass(frozen=True)
class Requeued:
    target: str
    retargeted: bool  # its target was removed: it goes to `target` now, every instance again


async def requeue(
    session: AsyncSession,
    *,
    upload_id: uuid.UUID,
    targets: Sequence[str] | None = None,
    default_target: str | None = None,
) -> Requeued | None:
    """Make the upload's job due now with fresh attempts (None: it has no job). A new lease
    token fences off any worker still holding the old lease. If its target is not one of
    `targets` (removed from the settings) it goes to `default_target` instead."""
    job = await repository.job_of_upload(session, upload_id)
    if job is None:
        return None
    if targets is not None and job.target not in targets and default_target is not None:
        other = await repository.job_for(
            session, upload_id=upload_id, target=default_target, kind=JobKind.STUDY
        )
        if other is not None:  # it went there once already: that job goes again
            repository.mark_abandoned(job, at=utcnow(), reason=job.last_error or TARGET_REMOVED)
            repository.make_due_again(other)
        else:
            repository.retarget(job, default_target)
        return Requeued(default_target, retargeted=True)
    repository.make_due_again(job)
    return Requeued(job.target, retargeted=False)


async def cancel(session: AsyncSession, *, upload_id: uuid.UUID) -> None:
    """Cancel the upload's jobs; a worker holding a lease is fenced off and writes nothing more."""
    await repository.cancel_jobs(session, upload_id)


def retrying_uploads() -> Select[uuid.UUID]:
    """The ids of uploads whose job is queued again after a failed attempt (a subquery)."""
    return repository.retrying_upload_ids()


@dataclass(frozen=True)
class QueueState:
    jobs: int  # not finished: queued, being sent, or waiting to retry
    oldest_age_seconds: float  # 0 when the queue is empty


async def queue_state(session: AsyncSession) -> QueueState:
    """The forward queue as an operator sees it."""
    jobs, oldest = await repository.unfinished_jobs(session)
    if oldest is None:
        return QueueState(jobs, 0.0)
    age = (dt.datetime.now(dt.UTC) - oldest.replace(tzinfo=oldest.tzinfo or dt.UTC)).total_seconds()
    return QueueState(jobs, max(0.0, age))


@dataclass(frozen=True)
class TargetActivity:
    """A PACS target's queue and its last outcomes, as an administrator sees them (no study,
    no patient: counts, times and the PACS's last error)."""

    queued_jobs: int  # not finished: queued, being sent, or waiting to retry
    retrying_jobs: int  # of those, queued again after a failed attempt
    oldest_job_age_seconds: float | None  # None when nothing waits
    last_delivered_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_attempt_outcome: Literal["delivered", "failed", "retrying"] | None  # failed: for good
    last_error: str | None


def _age(since: dt.datetime, now: dt.datetime) -> float:
    return max(0.0, (now - since.replace(tzinfo=since.tzinfo or dt.UTC)).total_seconds())


async def target_activity(
    session: AsyncSession, targets: Sequence[str]
) -> dict[str, TargetActivity]:
    """Each of `targets` (the configured names) with its queue and last outcomes."""
    now = dt.datetime.now(dt.UTC)
    queues = {row.target: row for row in await repository.target_queues(session)}
    delivered = await repository.last_deliveries(session)
    activity: dict[str, TargetActivity] = {}
    for target in targets:
        queue = queues.get(target)
        last = await repository.last_attempted_job(session, target)
        outcome: Literal["delivered", "failed", "retrying"] | None = None
        if last is not None:
            if last.status == JobStatus.QUEUED:
                outcome = "retrying"
            else:
                outcome = "delivered" if last.failed_count == 0 else "failed"
        activity[target] = TargetActivity(
            queued_jobs=queue.queued if queue else 0,
            retrying_jobs=queue.retrying if queue else 0,
            oldest_job_age_seconds=(
                _age(queue.oldest_created_at, now)
                if queue and queue.oldest_created_at is not None
                else None
            ),
            last_delivered_at=delivered.get(target),
            last_attempt_at=last.updated_at if last else None,
            last_attempt_outcome=outcome,
            last_error=last.last_error if last and outcome == "retrying" else None,
        )
    return activity
