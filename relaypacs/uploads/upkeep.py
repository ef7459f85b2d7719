"""The upload domain's scheduled upkeep (relaypacs/jobs.py runs it): abandoned uploads expire
and lose their chunks, the stored bytes of delivered studies are deleted after the retention,
and what the daily statistics need of a day's uploads.

Deletion never races an upload's progress: each upload is locked and checked again (still
abandoned; still delivered and not yet purged) in the transaction that changes it. The bytes
of an expired upload are deleted after its status commits (no chunk is taken any more), and
`purged_at` is set once they are gone: a deletion that failed is done again by the next run."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.db import Database, utcnow
from relaypacs.forwarding import service as forwarding
from relaypacs.storage import ObjectStorage
from relaypacs.uploads import repository
from relaypacs.uploads.models import UploadStatus
from relaypacs.uploads.notices import notify_expired
from relaypacs.uploads.repository import upkeep_rows

logger = logging.getLogger("relaypacs.uploads")

BATCH = 200  # uploads handled per run and query; the rest wait for the next run


async def expire_abandoned(db: Database, storage: ObjectStorage, *, idle: dt.timedelta) -> int:
    """Uploads still pending with no chunk for `idle`: `expired`, their chunk rows and stored
    chunks deleted, the uploader told. Returns how many expired."""
    cutoff = utcnow() - idle
    async with db.read_sessionmaker() as session, session.begin():
        candidates = await upkeep_rows.abandoned_upload_ids(session, cutoff=cutoff, limit=BATCH)
    expired = 0
    for upload_id in candidates:
        async with db.sessionmaker() as session, session.begin():
            upload = await upkeep_rows.lock_if_abandoned(session, upload_id, cutoff=cutoff)
            if upload is None:  # a chunk arrived, or it completed or was cancelled meanwhile
                continue
            upload.status = UploadStatus.EXPIRED
            await repository.delete_chunk_rows(session, upload_id)
            # A pipelined relay's parked job stops (what it sent stays at the PACS).
            await forwarding.cancel(session, upload_id=upload_id)
            notify_expired(session, upload, idle_hours=idle.total_seconds() / 3600)
            await record_event(
                session,
                actor=SYSTEM,
                action="upload.expire",
                object_type="upload",
                object_id=upload_id,
                study_instance_uid=upload.study_instance_uid,
                details={"idle_hours": round(idle.total_seconds() / 3600, 2)},
            )
        expired += 1
    if expired:
        logger.info("%d abandoned uploads expired", expired)
    await _purge(db, storage, status=UploadStatus.EXPIRED, delivered_before=None)
    return expired


async def purge_delivered(db: Database, storage: ObjectStorage, *, kept: dt.timedelta) -> int:
    """Delete the stored bytes of the studies delivered more than `kept` ago (the PACS is the
    record); the uploads keep their details, verdicts and receipts and say when their bytes
    were purged. Never an upload that is not delivered. Returns how many were purged."""
    return await _purge(
        db, storage, status=UploadStatus.DELIVERED, delivered_before=utcnow() - kept
    )


async def _purge(
    db: Database,
    storage: ObjectStorage,
    *,
    status: UploadStatus,
    delivered_before: dt.datetime | None,
) -> int:
    async with db.read_sessionmaker() as session, session.begin():
        candidates = await upkeep_rows.unpurged_upload_ids(
            session, status=status, delivered_before=delivered_before, limit=BATCH
        )
    purged = 0
    for upload_id in candidates:
        # The row stays locked while its objects are deleted: its status cannot move meanwhile.
        async with db.sessionmaker() as session, session.begin():
            upload = await upkeep_rows.lock_unpurged(
                session, upload_id, status=status, delivered_before=delivered_before
            )
            if upload is None:
                continue
            deleted = await storage.delete_prefix(repository.upload_prefix(upload_id))
            await upkeep_rows.mark_purged(session, upload_id, utcnow())
            await record_event(
                session,
                actor=SYSTEM,
                action="upload.purge",
                object_type="upload",
                object_id=upload_id,
                study_instance_uid=upload.study_instance_uid,
                details={"reason": status.value, "objects": deleted},
            )
        purged += 1
    if purged:
        logger.info("the stored bytes of %d %s uploads were deleted", purged, status.value)
    return purged


# --- for the daily statistics ----------------------------------------------------------------


@dataclass(frozen=True)
class UploadActivity:
    """What the statistics count of one upload (ids, sizes, times and codes; no patient data)."""

    id: uuid.UUID
    status: UploadStatus
    total_bytes: int
    instances: int
    completed_at: dt.datetime | None
    delivered_at: dt.datetime | None
    target: str | None
    failures: Counter[str] = field(default_factory=Counter)


async def day_activity(db: Database, start: dt.datetime, end: dt.datetime) -> list[UploadActivity]:
    """The uploads started in [start, end), with their target and refused files' codes."""
    async with db.read_sessionmaker() as session, session.begin():
        rows = await upkeep_rows.uploads_started_between(session, start, end)
        failures = await upkeep_rows.failures_between(session, start, end)
        targets = await forwarding.targets_of(session, [row.id for row in rows])
    codes: dict[uuid.UUID, Counter[str]] = {}
    for upload_id, code, count in failures:
        codes.setdefault(upload_id, Counter())[code] += count
    return [
        UploadActivity(
            id=row.id,
            status=row.status,
            total_bytes=row.total_bytes,
            instances=row.instance_count or 0,
            completed_at=row.completed_at,
            delivered_at=row.delivered_at,
            target=targets.get(row.id),
            failures=codes.get(row.id, Counter()),
        )
        for row in rows
    ]
