"""The study of an upload as the report domain sees it: whose it is and what it is (the facts a
report keeps), and the overview a report page shows (series, forwarding)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from relaypacs.forwarding import service as forwarding
from relaypacs.uploads import repository
from relaypacs.uploads.errors import UploadNotFound
from relaypacs.uploads.models import ForwardStatus, Upload, UploadStatus
from relaypacs.uploads.repository import read_rows
from relaypacs.uploads.schemas import StudyMetadata


@dataclass(frozen=True)
class StudyFacts:
    """What a report keeps of its upload: whose it is and what the study is (PHI: never
    logged)."""

    upload_id: uuid.UUID
    uploader_id: uuid.UUID
    study_instance_uid: str
    metadata: StudyMetadata


@dataclass(frozen=True)
class StudyOverview:
    """An upload's study as a report page shows it: the patient and study details, the series
    and their instance counts, what the PACS confirmed."""

    facts: StudyFacts
    status: UploadStatus
    instance_count: int
    series: dict[str, int]  # SeriesInstanceUID -> valid instances
    target: str | None
    confirmed: int
    delivered_at: dt.datetime | None
    created_at: dt.datetime
    completed_at: dt.datetime | None
    attempts: int  # forwarding attempts that failed (reset by an administrator's retry)
    last_error: str | None  # the last forwarding attempt's error, if it failed


def _facts(upload: Upload) -> StudyFacts:
    return StudyFacts(
        upload_id=upload.id,
        uploader_id=upload.user_id,
        study_instance_uid=upload.study_instance_uid,
        metadata=StudyMetadata.model_validate(upload.study_metadata),
    )


async def study_facts(session: AsyncSession, *, upload_id: uuid.UUID) -> StudyFacts:
    """The study of an existing upload (the caller knows it exists: a settled delivery)."""
    upload = await session.run_sync(repository.find_upload, upload_id)
    if upload is None:
        raise UploadNotFound()
    return _facts(upload)


async def study_overview(session: AsyncSession, *, upload_id: uuid.UUID) -> StudyOverview:
    """The study of an upload for its report page (no check of who asks: the report domain
    decided that its user may see it)."""

    def read(sync: Session) -> StudyOverview:
        upload = repository.find_upload(sync, upload_id)
        if upload is None:
            raise UploadNotFound()
        series = read_rows.series_instance_counts(sync, upload_id)
        job = forwarding.job_summary(sync, upload_id)
        counts = read_rows.forward_status_counts(sync, upload_id)
        return StudyOverview(
            facts=_facts(upload),
            status=upload.status,
            instance_count=sum(counts.values()) or sum(series.values()),
            series=series,
            target=job.target if job else None,
            confirmed=counts.get(ForwardStatus.CONFIRMED, 0),
            delivered_at=upload.delivered_at,
            created_at=upload.created_at,
            completed_at=upload.completed_at,
            attempts=job.attempts if job else 0,
            last_error=job.last_error if job else None,
        )

    return await session.run_sync(read)
