"""Write-back: a report signed (or amended) in the gateway is stored into its study in the PACS
as an Encapsulated PDF instance, through the forwarding outbox and STOW-RS path (a `report`
job, enqueued with the signature: reports.service), verified by QIDO-RS and retried like a
study's instances.

`ReportWriteBack` is the forwarding worker's instance source for those jobs: the first time
it sees a signed version it builds its instance once (the report's PDF; the patient and study
attributes of the study as the PACS lists it; new Series and SOP Instance UIDs; Modality DOC)
and keeps it in object storage, so that every retry sends the same bytes under the same UID.
Only the latest signed version is written (its PDF carries the amendment history). Once the
PACS lists it, its SOP Instance UID is the report's `pacs_receipt_id` (audited, on the study's
timeline as "report stored in the PACS").
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.config import Settings
from relaypacs.dicom.documents import PdfInstance, build_encapsulated_pdf, study_attributes
from relaypacs.forwarding import service as forwarding
from relaypacs.forwarding.source import (
    ForwardCounts,
    InstanceSource,
    SentInstance,
    SettledUpload,
    StudyToForward,
)
from relaypacs.pacs.dicomweb import Disposition, InstancePart, InstanceResult
from relaypacs.pacs.reports import ReportClient
from relaypacs.reports import repository, service
from relaypacs.reports.models import SIGNED_STATUSES, CopyStatus, Report, ReportPacsCopy
from relaypacs.storage import ObjectStorage

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9900  # the report's series, after the study's own

_STATUS_OF = {
    Disposition.STORED: CopyStatus.SENT,
    Disposition.FAILED: CopyStatus.FAILED,
    Disposition.RETRY: CopyStatus.PENDING,
}


def copy_key(report: Report, version: int) -> str:
    return f"reports/{report.id}/v{version}.dcm"


def _fallback_attributes(report: Report) -> dict[str, Any]:
    """The upload's own details, where the PACS does not list the study."""
    metadata = report.study_metadata or {}
    return {
        k: v
        for k, v in {
            "PatientName": metadata.get("patient_name"),
            "PatientID": metadata.get("patient_id"),
            "StudyDate": metadata.get("study_date"),
            "AccessionNumber": metadata.get("accession_number"),
            "StudyDescription": metadata.get("study_description"),
        }.items()
        if v
    }


def _part(copy: ReportPacsCopy) -> InstancePart:
    return InstancePart(
        file_index=copy.version,
        sop_instance_uid=copy.sop_instance_uid,
        size=copy.size,
        keys=(copy.storage_key,),
    )


class ReportWriteBack(InstanceSource):
    """A report's written-back versions, for the forwarding worker (`report` jobs)."""

    def __init__(self, settings: Settings, storage: ObjectStorage) -> None:
        self._targets = {t.name: t for t in settings.pacs_targets}
        self._storage = storage

    async def _report(self, session: AsyncSession, upload_id: uuid.UUID) -> Report | None:
        return await repository.report_of_upload(session, upload_id)

    async def start(self, session: AsyncSession, upload_id: uuid.UUID) -> StudyToForward | None:
        report = await self._report(session, upload_id)
        if report is None or report.status not in SIGNED_STATUSES:
            return None
        made = {c.version for c in await repository.copies(session, report.id)}
        if report.version not in made:
            await self._build(session, report)
        copies = await repository.copies(session, report.id)
        return StudyToForward(
            study_instance_uid=report.study_instance_uid or "",
            to_send=[_part(c) for c in copies if c.status == CopyStatus.PENDING],
            sop_uids={c.version: c.sop_instance_uid for c in copies},
        )

    async def _build(self, session: AsyncSession, report: Report) -> None:
        """The latest signed version's Encapsulated PDF instance, kept in object storage."""
        target_name = (await forwarding.delivered_targets(session, [report.upload_id])).get(
            report.upload_id
        )
        target = self._targets.get(target_name or "")
        if target is None:
            raise RuntimeError("the report's study was delivered to no configured PACS target")
        study_uid = report.study_instance_uid or ""
        client = ReportClient(target, self._storage)
        try:
            listed = await client.study(study_uid)
        finally:
            await client.aclose()
        attributes = study_attributes(listed) if listed else _fallback_attributes(report)
        pdf = await service.stored_pdf(session, self._storage, report)
        instance = PdfInstance(
            study_instance_uid=study_uid,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=SERIES_NUMBER,
            instance_number=report.version,
            title=f"Report, version {report.version}",
            created_at=dt.datetime.now(dt.UTC),
        )
        data = await asyncio.to_thread(build_encapsulated_pdf, pdf, instance, attributes)
        key = copy_key(report, report.version)
        sha256 = hashlib.sha256(data).hexdigest()
        await self._storage.put(key, data, sha256=sha256)
        repository.add_copy(
            session,
            ReportPacsCopy(
                report_id=report.id,
                version=report.version,
                target=target.name,
                sop_instance_uid=instance.sop_instance_uid,
                series_instance_uid=instance.series_instance_uid,
                storage_key=key,
                size=len(data),
                sha256=sha256,
                status=CopyStatus.PENDING,
            ),
        )
        await session.flush()
        logger.info("report %s version %d: PDF instance built", report.id, report.version)

    def record_answers(
        self, connection: Connection, upload_id: uuid.UUID, results: Sequence[InstanceResult]
    ) -> None:
        repository.record_copy_answers(
            connection,
            upload_id,
            [
                (
                    r.file_index,
                    _STATUS_OF[r.disposition].value,
                    r.reason if r.disposition != Disposition.STORED else None,
                    r.md5,
                )
                for r in results
            ],
        )

    async def counts(self, session: AsyncSession, upload_id: uuid.UUID) -> ForwardCounts:
        report = await self._report(session, upload_id)
        copies = await repository.copies(session, report.id) if report else []
        statuses = [c.status for c in copies]
        return ForwardCounts(
            pending=statuses.count(CopyStatus.PENDING),
            sent=statuses.count(CopyStatus.SENT),
            confirmed=statuses.count(CopyStatus.CONFIRMED),
            failed=statuses.count(CopyStatus.FAILED),
        )

    async def confirm_listed(
        self,
        session: AsyncSession,
        upload_id: uuid.UUID,
        *,
        sop_uids: Mapping[int, str | None],
        listed: set[str],
    ) -> int:
        report = await self._report(session, upload_id)
        if report is None:
            return 0
        unlisted = 0
        for copy in await repository.copies(session, report.id, statuses=[CopyStatus.SENT]):
            if copy.sop_instance_uid in listed:
                copy.status = CopyStatus.CONFIRMED
            else:  # answered stored, not listed: send it again
                copy.status, copy.reason = CopyStatus.PENDING, "not_listed_by_qido"
                unlisted += 1
        await session.flush()
        return unlisted

    async def sent_instances(
        self, session: AsyncSession, upload_id: uuid.UUID
    ) -> list[SentInstance]:
        report = await self._report(session, upload_id)
        if report is None:
            return []
        answered = [CopyStatus.SENT, CopyStatus.CONFIRMED]
        return [
            SentInstance(
                part=_part(c), series_instance_uid=c.series_instance_uid, sha256=c.sha256, md5=c.md5
            )
            for c in await repository.copies(session, report.id, statuses=answered)
            if c.released_at is None  # verified when confirmed; its bytes deleted by retention
        ]

    async def refuse(
        self, session: AsyncSession, upload_id: uuid.UUID, reasons: Mapping[int, str]
    ) -> None:
        report = await self._report(session, upload_id)
        if report is None:
            return
        for copy in await repository.copies(session, report.id):
            if copy.version in reasons:
                copy.status, copy.reason = CopyStatus.FAILED, reasons[copy.version][:500]
        await session.flush()

    async def finish(
        self, session: AsyncSession, upload_id: uuid.UUID, *, delivered: bool, at: dt.datetime
    ) -> SettledUpload | None:
        """Every version sent is listed by the PACS (or refused for good): the confirmed ones
        get their receipt, the latest of them is the report's; each is audited once."""
        report = await self._report(session, upload_id)
        if report is None:
            return None
        for copy in await repository.copies(session, report.id):
            if copy.status == CopyStatus.CONFIRMED and copy.settled_at is None:
                copy.settled_at = at
                report.pacs_receipt_id = copy.sop_instance_uid
                action, outcome = "report.pacs_stored", "success"
            elif copy.status == CopyStatus.FAILED and copy.settled_at is None:
                copy.settled_at = at
                action, outcome = "report.pacs_failed", "failure"
            else:
                continue
            await record_event(
                session,
                actor=SYSTEM,
                action=action,
                outcome=outcome,
                object_type="report",
                object_id=report.id,
                study_instance_uid=report.study_instance_uid,
                details={
                    "version": copy.version,
                    "target": copy.target,
                    "sop_instance_uid": copy.sop_instance_uid,
                    "reason": copy.reason if outcome == "failure" else None,
                },
            )
        await session.flush()
        # Only "settled, not cancelled" matters to the worker for a report job (no settle hook
        # runs for it).
        return SettledUpload(
            user_id=report.uploader_id or report.id,
            study_instance_uid=report.study_instance_uid or "",
        )
