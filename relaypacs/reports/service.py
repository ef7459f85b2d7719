"""The report lifecycle's use cases: a delivered study's report opens (pending), is assigned to a
radiologist by an administrator or by the rule (assigned), drafted, signed (ready) and amended
(amended; every signed version is kept). Who may see a report: its uploader, the radiologist it
is assigned to, administrators (audited); anyone else gets the same 404 as a missing one.

Who reads a report is decided in reports/assignment.py (by hand, the radiologists'
modalities) and reports/assignment_rule.py (the automatic rule); an upload's timeline is
reports/timeline.py; reports from the PACS and the write-back to it are reports/sync.py and
reports/writeback.py."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import SYSTEM, Actor
from relaypacs.audit.service import record_alone, record_event
from relaypacs.auth import repository as users
from relaypacs.auth.models import Role, User
from relaypacs.db import Database, utcnow
from relaypacs.forwarding import service as forwarding
from relaypacs.notifications.service import notify
from relaypacs.reports import assignment, assignment_rule, pdf, repository
from relaypacs.reports.errors import (
    ReportEmpty,
    ReportNotFound,
    ReportNotSigned,
    ReportSigned,
    ReportVersionNotFound,
)
from relaypacs.reports.models import (
    SIGNED_STATUSES,
    CopyStatus,
    Report,
    ReportStatus,
    ReportVersion,
)
from relaypacs.reports.objects import current_pdf_key, pdf_key, version_pdf_key
from relaypacs.reports.repository import WorklistFilter
from relaypacs.reports.schemas import (
    DraftSave,
    ReportAmend,
    ReportRead,
    ReportSign,
    ReportSummary,
    ReportVersionRead,
    SeriesRead,
    StudyView,
)
from relaypacs.storage import ObjectNotFound, ObjectStorage
from relaypacs.uploads import service as uploads
from relaypacs.uploads.schemas import StudyMetadata

logger = logging.getLogger(__name__)

# --- opening ---------------------------------------------------------------------------------


def _search_text(metadata: StudyMetadata, study_instance_uid: str) -> str:
    parts = (
        metadata.patient_name,
        metadata.patient_id,
        metadata.accession_number,
        metadata.study_description,
        study_instance_uid,
    )
    return "\n".join(p for p in parts if p).lower()


async def open_report(
    session: AsyncSession, *, upload_id: uuid.UUID, auto_assign: bool = False
) -> None:
    """A delivered study awaits its report (status pending), assigned at once when the
    assignment rule is on (relaypacs/reports/assignment_rule.py: the administrator's, else
    `auto_assign`, the configuration's): written when the caller's transaction, the one that
    settles the delivery, commits. A study delivered again (a retry) keeps its report."""
    if await repository.report_of_upload(session, upload_id) is not None:
        return
    facts = await uploads.study_facts(session, upload_id=upload_id)
    metadata = facts.metadata
    report = await repository.add_report(
        session,
        Report(
            upload_id=upload_id,
            status=ReportStatus.PENDING,
            uploader_id=facts.uploader_id,
            study_instance_uid=facts.study_instance_uid,
            modality=(metadata.modality or "").strip().upper()[:16] or None,
            study_date=(metadata.study_date or "")[:16] or None,
            study_metadata=metadata.model_dump(),
            search_text=_search_text(metadata, facts.study_instance_uid),
        ),
    )
    rule = await assignment_rule.effective_rule(session, configured=auto_assign)
    if rule.enabled:
        radiologist = await assignment_rule.next_radiologist(
            session, report.modality, by_modality=rule.by_modality
        )
        if radiologist is not None:
            await assignment.assign(session, report, radiologist, actor=SYSTEM, rule=True)


# --- who sees what ---------------------------------------------------------------------------


def may_read(user: User, report: Report) -> bool:
    """The uploader, the radiologist it is assigned to, and administrators."""
    return user.role == Role.ADMIN or user.id in (report.uploader_id, report.radiologist_id)


def _visible(report: Report | None, report_id: uuid.UUID, user: User) -> Report:
    if report is None:
        raise ReportNotFound().denying("report", report_id, reason="missing")
    if not may_read(user, report):
        raise ReportNotFound().denying("report", report_id, report.study_instance_uid)
    return report


async def get_report(session: AsyncSession, *, report_id: uuid.UUID, user: User) -> Report:
    """The report if this user may read it; otherwise ReportNotFound."""
    return _visible(await repository.get_report(session, report_id), report_id, user)


async def get_writable_report(session: AsyncSession, *, report_id: uuid.UUID, user: User) -> Report:
    """The report, locked, if it is assigned to this radiologist; otherwise the same 404 as a
    missing one (an uploader who may read it is not told more)."""
    report = await repository.get_report(session, report_id, lock=True)
    if report is None:
        raise ReportNotFound().denying("report", report_id, reason="missing")
    if report.radiologist_id != user.id:
        raise ReportNotFound().denying("report", report_id, report.study_instance_uid)
    return report


# --- reading ---------------------------------------------------------------------------------


def _summary(report: Report) -> ReportSummary:
    return ReportSummary(
        id=report.id,
        upload_id=report.upload_id,
        status=report.status,
        study_instance_uid=report.study_instance_uid,
        modality=report.modality,
        study_date=report.study_date,
        metadata=StudyMetadata.model_validate(report.study_metadata or {}),
        radiologist_id=report.radiologist_id,
        assigned_at=report.assigned_at,
        version=report.version,
        created_at=report.created_at,
        ready_at=report.ready_at,
    )


def _version(v: ReportVersion, receipts: dict[int, str]) -> ReportVersionRead:
    return ReportVersionRead(
        version=v.version,
        findings=v.findings,
        impression=v.impression,
        signed_by=v.signed_by_id,
        signed_at=v.signed_at,
        reason=v.reason,
        source="pacs" if v.source == "pacs" else "gateway",
        source_instance_uid=v.source_instance_uid,
        pacs_receipt_id=receipts.get(v.version),
    )


async def _receipts(session: AsyncSession, report: Report) -> dict[int, str]:
    """The SOP Instance UID of each version the PACS holds as written back."""
    stored = await repository.copies(session, report.id, statuses=[CopyStatus.CONFIRMED])
    return {c.version: c.sop_instance_uid for c in stored}


async def _read(session: AsyncSession, report: Report, user: User) -> ReportRead:
    receipts = await _receipts(session, report)
    versions = [_version(v, receipts) for v in await repository.versions(session, report.id)]
    sees_draft = user.role == Role.ADMIN or user.id == report.radiologist_id
    return ReportRead(
        **_summary(report).model_dump(),
        draft=DraftSave(findings=report.findings, impression=report.impression)
        if sees_draft
        else None,
        latest=versions[-1] if versions else None,
        versions=versions,
        pacs_receipt_id=report.pacs_receipt_id,
    )


async def _record_read(
    db: Database, *, actor: Actor, report: Report, action: str, **details: object
) -> None:
    await record_alone(
        db.sessionmaker,
        actor=actor,
        action=action,
        object_type="report",
        object_id=report.id,
        study_instance_uid=report.study_instance_uid,
        details=dict(details),
    )


async def list_reports(
    db: Database, *, user: User, actor: Actor, filters: WorklistFilter, limit: int, offset: int
) -> tuple[list[ReportSummary], int]:
    """The worklist, oldest first: a radiologist's reports assigned to them, a clinician's the
    reports of their own uploads, an administrator's every report. A page that shows study
    details is recorded (after the read has given its connection back)."""
    if user.role == Role.RADIOLOGIST:
        filters = WorklistFilter(**{**filters.__dict__, "radiologist_id": user.id})
    elif user.role != Role.ADMIN:
        filters = WorklistFilter(**{**filters.__dict__, "uploader_id": user.id})
    async with db.read_sessionmaker() as session, session.begin():
        reports, total = await repository.worklist(session, filters, limit=limit, offset=offset)
    items = [_summary(r) for r in reports]
    if items:
        await record_alone(
            db.sessionmaker,
            actor=actor,
            action="report.list",
            object_type="report",
            details={"report_ids": [str(i.id) for i in items]},
        )
    return items, total


async def show_report(
    db: Database, *, report_id: uuid.UUID, user: User, actor: Actor
) -> ReportRead:
    async with db.read_sessionmaker() as session, session.begin():
        report = await get_report(session, report_id=report_id, user=user)
        view = await _read(session, report, user)
    await _record_read(db, actor=actor, report=report, action="report.read")
    return view


async def show_version(
    db: Database, *, report_id: uuid.UUID, version: int, user: User, actor: Actor
) -> ReportVersionRead:
    async with db.read_sessionmaker() as session, session.begin():
        report = await get_report(session, report_id=report_id, user=user)
        found = await repository.get_version(session, report.id, version)
        if found is None:
            raise ReportVersionNotFound()
        view = _version(found, await _receipts(session, report))
    await _record_read(db, actor=actor, report=report, action="report.read", version=version)
    return view


def viewer_url(template: str | None, study_instance_uid: str) -> str | None:
    """The PACS viewer's URL for the study (RELAYPACS_PACS_VIEWER_URL), or None."""
    if template is None:
        return None
    return template.replace("{study_instance_uid}", quote(study_instance_uid, safe=""))


async def show_study(
    db: Database,
    *,
    report_id: uuid.UUID,
    user: User,
    actor: Actor,
    viewer_template: str | None,
) -> StudyView:
    """The report page's study: patient and study details, series, "PACS confirmed N/N", and
    a link that opens the study in the PACS's viewer."""
    async with db.read_sessionmaker() as session, session.begin():
        report = await get_report(session, report_id=report_id, user=user)
        study = await uploads.study_overview(session, upload_id=report.upload_id)
    await _record_read(db, actor=actor, report=report, action="report.study")
    uid = study.facts.study_instance_uid
    return StudyView(
        report_id=report.id,
        upload_id=report.upload_id,
        study_instance_uid=uid,
        metadata=study.facts.metadata,
        upload_status=study.status.value,
        series=[
            SeriesRead(series_instance_uid=s, instances=n) for s, n in sorted(study.series.items())
        ],
        series_count=len(study.series),
        instance_count=study.instance_count,
        target=study.target,
        confirmed=study.confirmed,
        pacs_confirmed=f"PACS confirmed {study.confirmed}/{study.instance_count}",
        delivered_at=study.delivered_at,
        viewer_url=viewer_url(viewer_template, uid),
    )


# --- writing ---------------------------------------------------------------------------------


async def save_draft(
    session: AsyncSession, *, report: Report, user: User, actor: Actor, body: DraftSave
) -> ReportRead:
    """The assigned radiologist's working copy (`report`: get_writable_report's), before
    signing (a signed report is amended)."""
    if report.status in SIGNED_STATUSES:
        raise ReportSigned()
    if "findings" in body.model_fields_set:
        report.findings = body.findings
    if "impression" in body.model_fields_set:
        report.impression = body.impression
    await session.flush()
    await record_event(
        session,
        actor=actor,
        action="report.draft",
        object_type="report",
        object_id=report.id,
        study_instance_uid=report.study_instance_uid,
    )
    return await _read(session, report, user)


async def _add_signed_version(
    session: AsyncSession, report: Report, user: User, *, reason: str | None
) -> ReportVersion:
    findings = (report.findings or "").strip()
    impression = (report.impression or "").strip()
    if not findings or not impression:
        raise ReportEmpty()
    report.version += 1
    version = ReportVersion(
        report_id=report.id,
        version=report.version,
        findings=findings,
        impression=impression,
        signed_by_id=user.id,
        signed_at=utcnow(),
        reason=reason,
    )
    await repository.add_version(session, version)
    return version


async def sign_report(
    session: AsyncSession, *, report: Report, user: User, actor: Actor, body: ReportSign
) -> ReportRead:
    """Sign the working copy (fields in `body` replace it first): version 1, ready; the
    uploader is told."""
    if report.status in SIGNED_STATUSES:
        raise ReportSigned()
    if body.findings is not None:
        report.findings = body.findings
    if body.impression is not None:
        report.impression = body.impression
    version = await _add_signed_version(session, report, user, reason=None)
    report.status = ReportStatus.READY
    report.ready_at = version.signed_at
    await session.flush()
    await _signed(session, report, actor, kind="report_ready")
    await _write_back(session, report)
    return await _read(session, report, user)


async def amend_report(
    session: AsyncSession, *, report: Report, user: User, actor: Actor, body: ReportAmend
) -> ReportRead:
    """Sign a new version of a signed report, with why: amended; the uploader is told. The
    earlier versions stay readable."""
    if report.status not in SIGNED_STATUSES:
        raise ReportNotSigned()
    report.findings = body.findings
    report.impression = body.impression
    await _add_signed_version(session, report, user, reason=body.reason.strip())
    report.status = ReportStatus.AMENDED
    await session.flush()
    await _signed(session, report, actor, kind="report_amended")
    await _write_back(session, report)
    return await _read(session, report, user)


async def _write_back(session: AsyncSession, report: Report) -> None:
    """The outbox of the write-back: the signed version goes to the PACS that holds the study
    (as an Encapsulated PDF instance, reports/writeback.py) once this transaction commits."""
    targets = await forwarding.delivered_targets(session, [report.upload_id])
    target = targets.get(report.upload_id)
    if target is not None:
        await forwarding.enqueue_report(session, upload_id=report.upload_id, target=target)


async def _signed(session: AsyncSession, report: Report, actor: Actor, *, kind: str) -> None:
    if report.uploader_id is not None:
        notify(
            session,
            user_id=report.uploader_id,
            kind=kind,
            related_id=report.id,
            payload={"version": report.version, "upload_id": str(report.upload_id)},
        )
    await record_event(
        session,
        actor=actor,
        action="report.sign" if kind == "report_ready" else "report.amend",
        object_type="report",
        object_id=report.id,
        study_instance_uid=report.study_instance_uid,
        details={"version": report.version},
    )


# --- administration --------------------------------------------------------------------------


async def assign_report(
    session: AsyncSession,
    *,
    report_id: uuid.UUID,
    radiologist_id: uuid.UUID,
    actor: Actor,
    admin: User,
) -> ReportRead:
    """An administrator assigns (or reassigns) a report not yet signed to an active
    radiologist (reports.assignment)."""
    report = await assignment.assign_report(
        session, report_id=report_id, radiologist_id=radiologist_id, actor=actor
    )
    return await _read(session, report, admin)


# --- the PDF ---------------------------------------------------------------------------------


async def _pdf_document(session: AsyncSession, report: Report) -> pdf.ReportDocument:
    versions = await repository.versions(session, report.id)
    names: dict[uuid.UUID | None, str] = {None: "(from the PACS)"}
    for v in versions:
        if v.signed_by_id is not None and v.signed_by_id not in names:
            signer = await users.get_user(session, v.signed_by_id)
            names[v.signed_by_id] = signer.username if signer else str(v.signed_by_id)
    metadata = StudyMetadata.model_validate(report.study_metadata or {})
    return pdf.ReportDocument(
        report_id=str(report.id),
        upload_id=str(report.upload_id),
        study_instance_uid=report.study_instance_uid or "-",
        patient_name=metadata.patient_name,
        patient_id=metadata.patient_id,
        study_date=metadata.study_date,
        modality=metadata.modality,
        study_description=metadata.study_description,
        accession_number=metadata.accession_number,
        versions=[
            pdf.SignedVersion(
                version=v.version,
                findings=v.findings,
                impression=v.impression,
                signed_by=names[v.signed_by_id],
                signed_at=v.signed_at,
                reason=v.reason,
            )
            for v in versions
        ],
    )


async def _render(storage: ObjectStorage, document: pdf.ReportDocument, key: str) -> bytes:
    data = await asyncio.to_thread(pdf.render, document)
    await storage.put(key, data, sha256=hashlib.sha256(data).hexdigest())
    return data


@dataclass(frozen=True)
class PdfToMake:
    """What making the PDF of a report's latest signed version takes, read in a transaction;
    made by :func:`made_pdf` with none open (object storage may be remote)."""

    report_id: uuid.UUID
    version: int
    key: str  # where it is kept once made
    # Where it is kept already (unless retention deleted it meanwhile): `key`, or the PACS's PDF
    stored: str | None
    document: pdf.ReportDocument


async def pdf_to_make(session: AsyncSession, report: Report) -> PdfToMake:
    return PdfToMake(
        report_id=report.id,
        version=report.version,
        key=pdf_key(report),
        stored=current_pdf_key(report),
        document=await _pdf_document(session, report),
    )


async def made_pdf(storage: ObjectStorage, plan: PdfToMake) -> tuple[bytes, bool]:
    """The PDF, read from object storage or made and kept there (then True: record it with
    :func:`record_pdf` in the transaction that uses it). No database here."""
    if plan.stored is not None:
        with contextlib.suppress(ObjectNotFound):
            return await storage.get(plan.stored), False
    return await _render(storage, plan.document, plan.key), True


async def record_pdf(session: AsyncSession, plan: PdfToMake) -> None:
    """The PDF of `plan` is kept in object storage (unless a later version was signed)."""
    await repository.set_pdf_key(session, plan.report_id, version=plan.version, key=plan.key)


async def report_pdf(
    db: Database, storage: ObjectStorage, *, report_id: uuid.UUID, user: User, actor: Actor
) -> tuple[bytes, str]:
    """The PDF of the report's latest signed version, and its file name: made once per version
    and kept in object storage. Whoever may read the report may download it (audited)."""
    async with db.read_sessionmaker() as session, session.begin():
        report = await get_report(session, report_id=report_id, user=user)
        if report.status not in SIGNED_STATUSES:
            raise ReportNotSigned("A report has a PDF once it is signed.")
        key, stored = pdf_key(report), current_pdf_key(report)
        document = None if stored else await _pdf_document(session, report)
    data = None
    if stored is not None:
        try:
            data = await storage.get(stored)
        except ObjectNotFound:  # deleted by retention meanwhile: made again
            async with db.read_sessionmaker() as session, session.begin():
                document = await _pdf_document(session, report)
    if data is None:
        assert document is not None
        data = await _render(storage, document, key)
        async with db.sessionmaker() as session, session.begin():
            await repository.set_pdf_key(session, report.id, version=report.version, key=key)
    await _record_read(db, actor=actor, report=report, action="report.pdf", version=report.version)
    return data, f"report-{report.id}-v{report.version}.pdf"


# --- retention -------------------------------------------------------------------------------

RELEASE_BATCH = 200  # versions per run; more wait for the next


async def release_written_back(db: Database, storage: ObjectStorage) -> int:
    """Retention of the report copies: once a study's bytes were purged (delivered longer than
    RELAYPACS_RETENTION_DAYS ago), delete the gateway's copies of every version of its report
    that the PACS holds (written back and listed by it: `pacs_receipt_id`): the Encapsulated
    PDF instance sent, and that version's PDF. The signed text, signer and times stay in the
    database (the record), the receipt too; the PDF is made again from them when asked for.
    A version not (yet) confirmed by the PACS keeps its copies, whatever its age. Returns how
    many versions were released."""
    async with db.read_sessionmaker() as session, session.begin():
        rows = await repository.releasable_copies(
            session, uploads.purged_delivered_uploads(), limit=RELEASE_BATCH
        )
        todo = [
            (c.report_id, c.version, c.storage_key, c.sop_instance_uid, r.study_instance_uid)
            for c, r in rows
        ]
    released = 0
    for report_id, version, instance_key, receipt, study_uid in todo:
        pdf_object = version_pdf_key(report_id, version)
        # Deleted first, then marked: a run that stops between the two deletes again next time
        # (a missing object is no error); a PDF asked for meanwhile is made again.
        await storage.delete(instance_key)
        await storage.delete(pdf_object)
        async with db.sessionmaker() as session, session.begin():
            if not await repository.mark_released(
                session, report_id, version, at=utcnow(), pdf=pdf_object
            ):
                continue
            await record_event(
                session,
                actor=SYSTEM,
                action="report.purge",
                object_type="report",
                object_id=report_id,
                study_instance_uid=study_uid,
                details={"version": version, "pacs_receipt_id": receipt},
            )
        released += 1
    if released:
        logger.info(
            "retention: the stored copies of %d report versions held by the PACS were deleted",
            released,
        )
    return released
