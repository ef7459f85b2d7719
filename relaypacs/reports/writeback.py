"""Write-back: a report signed (or amended) in the gateway is stored into its study in the PACS
as an Encapsulated PDF instance, through the forwarding outbox and STOW-RS path (a `report`
job, enqueued with the signature: reports.service), verified by QIDO-RS and retried like a
study's instances.

`ReportWriteBack` is the forwarding worker's instance source for those jobs: the first time
it sees a signed version it builds its instance once (the report's PDF; the patient and study
attributes of the study as the PACS lists it; new Series and SOP Instance UIDs; Modality DOC)
and keeps it in object storage, so that every retry sends the same bytes under the same UID.
Only the latest signed version is written (its PDF carries the amendment history). The PACS is
asked, and object storage written, with no database transaction open (see `prepare`). Once the
PACS lists it, its SOP Instance UID is the report's `pacs_receipt_id` (audited, on the study's
timeline as "report stored in the PACS").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.config import PacsTarget, Settings
from relaypacs.dicom.documents import PdfInstance, build_encapsulated_pdf, study_attributes
from relaypacs.forwarding import service as forwarding
from relaypacs.forwarding.source import (
    FencedTransaction,
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
from relaypacs.reports.objects import copy_key
from relaypacs.storage import ObjectStorage

logger = logging.getLogger(__name__)

SERIES_NUMBER = 9900  # the report's series, after the study's own

_STATUS_OF = {
    Disposition.STORED: CopyStatus.SENT,
    Disposition.FAILED: CopyStatus.FAILED,
    Disposition.RETRY: CopyStatus.PENDING,
}


@dataclass(frozen=True)
class _ToBuild:
    """What building a version's instance takes, read in a transaction."""

    study_instance_uid: str
    target: PacsTarget
    fallback_attributes: dict[str, Any]
    pdf: service.PdfToMake


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

    async def prepare(self, upload_id: uuid.UUID, transaction: FencedTransaction) -> None:
        """The latest signed version's Encapsulated PDF instance, built once and kept in object
        storage. The PACS is asked for the study's attributes, and the objects are stored, with
        no transaction open: a PACS that hangs must hold no database lock (on SQLite, every
        write of the gateway would wait for it). What was read is checked again in the fenced
        transaction that records the instance."""
        async with transaction() as session:
            plan = await self._to_build(session, upload_id)
        if plan is None:
            return
        client = ReportClient(plan.target, self._storage)
        try:
            listed = await client.study(plan.study_instance_uid)
        finally:
            await client.aclose()
        attributes = study_attributes(listed) if listed else plan.fallback_attributes
        pdf, pdf_made = await service.made_pdf(self._storage, plan.pdf)
        instance = PdfInstance(
            study_instance_uid=plan.study_instance_uid,
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=SERIES_NUMBER,
            instance_number=plan.pdf.version,
            title=f"Report, version {plan.pdf.version}",
            created_at=dt.datetime.now(dt.UTC),
        )
        data = await asyncio.to_thread(build_encapsulated_pdf, pdf, instance, attributes)
        # Its own key per build: a worker that lost its lease meanwhile (and builds it again
        # elsewhere) never overwrites the bytes of the instance the other one records. One
        # left by a build cancelled here is deleted by reports.objects.sweep_orphans.
        key = copy_key(plan.pdf.report_id, plan.pdf.version, instance.sop_instance_uid)
        sha256 = hashlib.sha256(data).hexdigest()
        await self._storage.put(key, data, sha256=sha256)
        try:
            async with transaction() as session:
                recorded = await self._record_copy(
                    session, plan, instance, key=key, data=data, sha256=sha256, pdf_made=pdf_made
                )
        except Exception:  # the lease lost meanwhile (LeaseLost) or the database: not recorded
            with contextlib.suppress(Exception):
                await self._storage.delete(key)
            raise
        if not recorded:
            with contextlib.suppress(Exception):
                await self._storage.delete(key)

    async def _to_build(self, session: AsyncSession, upload_id: uuid.UUID) -> _ToBuild | None:
        """What building the latest signed version's instance takes; None if it is built."""
        report = await self._report(session, upload_id)
        if report is None or report.status not in SIGNED_STATUSES:
            return None
        if report.version in {c.version for c in await repository.copies(session, report.id)}:
            return None
        target_name = (await forwarding.delivered_targets(session, [report.upload_id])).get(
            report.upload_id
        )
        target = self._targets.get(target_name or "")
        if target is None:
            raise RuntimeError("the report's study was delivered to no configured PACS target")
        return _ToBuild(
            study_instance_uid=report.study_instance_uid or "",
            target=target,
            fallback_attributes=_fallback_attributes(report),
            pdf=await service.pdf_to_make(session, report),
        )

    async def _record_copy(
        self,
        session: AsyncSession,
        plan: _ToBuild,
        instance: PdfInstance,
        *,
        key: str,
        data: bytes,
        sha256: str,
        pdf_made: bool,
    ) -> bool:
        """Record the built instance, unless the report changed since it was read (False)."""
        report = await repository.get_report(session, plan.pdf.report_id)
        if (
            report is None
            or report.status not in SIGNED_STATUSES
            or report.version != plan.pdf.version
            or report.version in {c.version for c in await repository.copies(session, report.id)}
        ):
            return False
        if pdf_made:
            await service.record_pdf(session, plan.pdf)
        repository.add_copy(
            session,
            ReportPacsCopy(
                report_id=report.id,
                version=report.version,
                target=plan.target.name,
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
        return True

    async def start(self, session: AsyncSession, upload_id: uuid.UUID) -> StudyToForward | None:
        report = await self._report(session, upload_id)
        if report is None or report.status not in SIGNED_STATUSES:
            return None
        copies = await repository.copies(session, report.id)
        if report.version not in {c.version for c in copies}:
            # `prepare` built it in a transaction fenced by this lease: a version signed since
            # would have fenced this worker off. Retried (the next attempt builds it).
            raise RuntimeError("the report's latest signed version is not built")
        return StudyToForward(
            study_instance_uid=report.study_instance_uid or "",
            to_send=[_part(c) for c in copies if c.status == CopyStatus.PENDING],
            sop_uids={c.version: c.sop_instance_uid for c in copies},
        )

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
