"""The scheduled upkeep's queries: abandoned uploads, uploads whose stored bytes are due for
deletion, and what the daily statistics read of a day's uploads."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple

from sqlalchemy import Select, and_, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.uploads.models import ForwardStatus, Upload, UploadChunk, UploadFile, UploadStatus


class UploadRow(NamedTuple):
    id: uuid.UUID
    status: UploadStatus
    total_bytes: int
    instance_count: int | None
    completed_at: dt.datetime | None
    delivered_at: dt.datetime | None


def _idle_since(cutoff: dt.datetime) -> Any:
    """Pending, unchanged since `cutoff`, and no chunk stored since."""
    return and_(
        Upload.status == UploadStatus.PENDING,
        Upload.updated_at < cutoff,
        ~exists().where(UploadChunk.upload_id == Upload.id, UploadChunk.created_at >= cutoff),
    )


async def abandoned_upload_ids(
    session: AsyncSession, *, cutoff: dt.datetime, limit: int
) -> list[uuid.UUID]:
    rows = await session.scalars(
        select(Upload.id).where(_idle_since(cutoff)).order_by(Upload.updated_at).limit(limit)
    )
    return list(rows)


async def lock_if_abandoned(
    session: AsyncSession, upload_id: uuid.UUID, *, cutoff: dt.datetime
) -> Upload | None:
    """The upload, locked, if it is still abandoned (the compare of the compare-and-set)."""
    return await session.scalar(
        select(Upload).where(Upload.id == upload_id, _idle_since(cutoff)).with_for_update()
    )


async def unpurged_upload_ids(
    session: AsyncSession,
    *,
    status: UploadStatus,
    delivered_before: dt.datetime | None,
    limit: int,
) -> list[uuid.UUID]:
    """Uploads in `status` whose stored bytes are still there (delivered before the cutoff)."""
    query = select(Upload.id).where(Upload.status == status, Upload.purged_at.is_(None))
    if delivered_before is not None:
        query = query.where(Upload.delivered_at < delivered_before)
    rows = await session.scalars(query.order_by(Upload.updated_at).limit(limit))
    return list(rows)


async def lock_unpurged(
    session: AsyncSession,
    upload_id: uuid.UUID,
    *,
    status: UploadStatus,
    delivered_before: dt.datetime | None,
) -> Upload | None:
    query = select(Upload).where(
        Upload.id == upload_id, Upload.status == status, Upload.purged_at.is_(None)
    )
    if delivered_before is not None:
        query = query.where(Upload.delivered_at < delivered_before)
    return await session.scalar(query.with_for_update())


async def mark_purged(session: AsyncSession, upload_id: uuid.UUID, when: dt.datetime) -> None:
    await session.execute(
        update(Upload)
        .where(Upload.id == upload_id)
        .values(purged_at=when, updated_at=Upload.updated_at)
        .execution_options(synchronize_session=False)
    )


# --- the daily statistics --------------------------------------------------------------------


async def uploads_started_between(
    session: AsyncSession, start: dt.datetime, end: dt.datetime
) -> list[UploadRow]:
    """The uploads started in [start, end)."""
    rows = await session.execute(
        select(
            Upload.id,
            Upload.status,
            Upload.total_bytes,
            Upload.instance_count,
            Upload.completed_at,
            Upload.delivered_at,
        ).where(Upload.created_at >= start, Upload.created_at < end)
    )
    return [UploadRow(*row) for row in rows]


async def failures_between(
    session: AsyncSession, start: dt.datetime, end: dt.datetime
) -> list[tuple[uuid.UUID, str, int]]:
    """(upload, error code, files) of the refused files of the uploads started in [start,
    end): verification's codes, and "pacs_refused" for a file the PACS refused for good."""
    code = func.coalesce(UploadFile.error_code, "pacs_refused")
    rows = await session.execute(
        select(UploadFile.upload_id, code, func.count())
        .join(Upload, Upload.id == UploadFile.upload_id)
        .where(
            Upload.created_at >= start,
            Upload.created_at < end,
            UploadFile.error_code.is_not(None)
            | (UploadFile.forward_status == ForwardStatus.FAILED),
        )
        .group_by(UploadFile.upload_id, code)
    )
    return [(upload_id, str(c), int(n)) for upload_id, c, n in rows]


def purged_delivered_ids() -> Select[uuid.UUID]:
    """The ids of delivered uploads whose stored bytes retention deleted (a subquery)."""
    return select(Upload.id).where(
        Upload.status == UploadStatus.DELIVERED, Upload.purged_at.is_not(None)
    )
