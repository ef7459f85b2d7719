"""The upload domain's part in administration (the admin and ops domains ask these through the
service): retry or cancel an upload's forwarding, the uploads that need attention, the count
of uploads by status, and the delivered uploads whose stored bytes were purged."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.db import utcnow
from relaypacs.forwarding import service as forwarding
from relaypacs.uploads import repository
from relaypacs.uploads.errors import UploadNotCancellable, UploadNotFound, UploadNotRetryable
from relaypacs.uploads.models import Upload, UploadStatus
from relaypacs.uploads.repository import upkeep_rows
from relaypacs.uploads.schemas import UploadSummary
from relaypacs.uploads.views import summary

RETRYABLE = (UploadStatus.FAILED, UploadStatus.QUEUED, UploadStatus.FORWARDING)
ProblemKind = Literal["failed", "stuck", "queued", "forwarding"]


async def _locked(session: AsyncSession, upload_id: uuid.UUID) -> Upload:
    upload = await session.run_sync(repository.find_upload, upload_id, lock=True)
    if upload is None:
        raise UploadNotFound()
    return upload


async def retry_forwarding(
    session: AsyncSession,
    *,
    upload_id: uuid.UUID,
    targets: Sequence[str] | None = None,
    default_target: str | None = None,
) -> Upload:
    """Send again what failed (and anything pending) now, resetting the retry schedule. If its
    PACS target was removed from the settings (not in `targets`), the study goes to
    `default_target`, every instance of it."""
    upload = await _locked(session, upload_id)
    if upload.status not in RETRYABLE:
        raise UploadNotRetryable()
    await repository.reset_failed_forwards(session, upload_id)
    requeued = await forwarding.requeue(
        session, upload_id=upload_id, targets=targets, default_target=default_target
    )
    if requeued is None:
        raise UploadNotRetryable("This upload has no forwarding job (no PACS was configured).")
    if requeued.retargeted:
        await repository.reset_all_forwards(session, upload_id)
    upload.status = UploadStatus.QUEUED
    return upload


async def cancel_forwarding(session: AsyncSession, *, upload_id: uuid.UUID) -> Upload:
    """Stop forwarding this upload for good (its stored files are the caller's to delete)."""
    upload = await _locked(session, upload_id)
    if upload.status == UploadStatus.DELIVERED:
        raise UploadNotCancellable("A delivered upload cannot be cancelled.")
    upload.status = UploadStatus.CANCELLED
    await forwarding.cancel(session, upload_id=upload_id)
    return upload


async def list_problem_uploads(
    session: AsyncSession, *, problem: ProblemKind, stuck_minutes: int, limit: int, offset: int
) -> tuple[list[UploadSummary], int]:
    """`failed`: the PACS refused instances; `stuck`: queued or forwarding and retrying, or
    not moved for `stuck_minutes`; `queued`, `forwarding`: as they say. Newest change first."""
    if problem == "failed":
        uploads, total = await repository.uploads_in_status(
            session, statuses=[UploadStatus.FAILED], limit=limit, offset=offset
        )
    elif problem in ("queued", "forwarding"):
        uploads, total = await repository.uploads_in_status(
            session, statuses=[UploadStatus(problem)], limit=limit, offset=offset
        )
    else:
        uploads, total = await repository.uploads_in_status(
            session,
            statuses=[UploadStatus.QUEUED, UploadStatus.FORWARDING, UploadStatus.RECEIVED],
            unmoved_since=utcnow() - dt.timedelta(minutes=stuck_minutes),
            or_among=forwarding.retrying_uploads(),
            limit=limit,
            offset=offset,
        )
    return [summary(u, u.total_bytes) for u in uploads], total


async def count_uploads_by_status(session: AsyncSession) -> dict[UploadStatus, int]:
    """Every status with its number of uploads (zero included)."""
    counts = await repository.count_by_status(session)
    return {status: counts.get(status, 0) for status in UploadStatus}


def purged_delivered_uploads() -> Select[uuid.UUID]:
    """The ids of delivered uploads whose stored bytes retention deleted (a subquery)."""
    return upkeep_rows.purged_delivered_ids()
