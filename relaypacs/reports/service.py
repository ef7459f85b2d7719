"""The report lifecycle's use cases: a delivered study's report opens (pending), is assigned to a
radiologist by an administrator or by the rule (assigned), drafted, signed (ready) and amended
(amended; every signed version is kept). Who may see a report: its uploader, the radiologist it
is assigned to, administrators (audited); anyone else gets the same 404 as a missing one.

Over 600 lines: the assignment rule (round robin by modality, radiologists' modalities) is the
part to move into `reports/assignment.py` next; the lifecycle itself reads best in one place."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit import service as audit
from relaypacs.audit.models import SYSTEM, Actor, AuditEvent
from relaypacs.audit.service import record_alone, record_event
from relaypacs.auth import repository as users
from relaypacs.auth.models import Role, User
from relaypacs.db import Database, utcnow
from relaypacs.notifications.service import notify
from relaypacs.reports import pdf, repository
from relaypacs.reports.errors import (
    NotARadiologist,
    RadiologistNotFound,
    ReportEmpty,
    ReportNotFound,
    ReportNotSigned,
    ReportSigned,
    ReportVersionNotFound,
)
from relaypacs.reports.models import SIGNED_STATUSES, Report, ReportStatus, ReportVersion
from relaypacs.reports.repository import WorklistFilter
from relaypacs.reports.schemas import (
    DraftSave,
    RadiologistList,
    RadiologistRead,
    ReportAmend,
    ReportRead,
    ReportSign,
    ReportSummary,
    ReportVersionRead,
    SeriesRead,
    StudyView,
    Timeline,
    TimelineStep,
)
from relaypacs.storage import ObjectStorage
from relaypacs.uploads import service as uploads
from relaypacs.uploads.schemas import StudyMetadata

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
    """A delivered study awaits its report (status pending), assigned at once by the rule when
    `auto_assign`: written when the caller's transaction, the one that settles the delivery,
    commits. A study delivered again (a retry) keeps its report."""
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
    if auto_assign:
        radiologist = await _next_radiologist(session, report.modality)
        if radiologist is not None:
            await _assign(session, report, radiologist, actor=SYSTEM, rule=True)


async def _next_radiologist(session: AsyncSession, modality: str | None) -> uuid.UUID | None:
    """Round robin: among the active radiologists registered for the modality (all active
    radiologists where none is), the one assigned least recently (never first)."""
    active = [
        u.id for u in await users.users_with_role(session, Role.RADIOLOGIST, active_only=True)
    ]
    if not active:
        return None
    candidates = active
    if modality:
        readers = set(await repository.readers_of(session, modality))
        candidates = [u for u in active if u in readers] or active
    last = await repository.last_assigned(session, candidates)
    never = dt.datetime.min.replace(tzinfo=dt.UTC)
    return min(candidates, key=lambda u: (last[u] or never, str(u)))


async def _assign(
    session: AsyncSession, report: Report, radiologist_id: uuid.UUID, *, actor: Actor, rule: bool
) -> None:
    previous = report.radiologist_id
    report.radiologist_id = radiologist_id
    report.status = ReportStatus.ASSIGNED
    report.assigned_at = utcnow()
    await session.flush()
    notify(session, user_id=radiologist_id, kind="report_assigned", related_id=report.id)
    await record_event(
        session,
        actor=actor,
        action="report.assign",
        object_type="report",
        object_id=report.id,
        study_instance_uid=report.study_instance_uid,
        details={
            "radiologist_id": str(radiologist_id),
            "previous": str(previous) if previous else None,
            "by": "rule" if rule else "admin",
        },
    )


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


def _version(v: ReportVersion) -> ReportVersionRead:
    return ReportVersionRead(
        version=v.version,
        findings=v.findings,
        impression=v.impression,
        signed_by=v.signed_by_id,
        signed_at=v.signed_at,
        reason=v.reason,
    )


async def _read(session: AsyncSession, report: Report, user: User) -> ReportRead:
    versions = [_version(v) for v in await repository.versions(session, report.id)]
    sees_draft = user.role == Role.ADMIN or user.id == report.radiologist_id
    return ReportRead(
        **_summary(report).model_dump(),
        draft=DraftSave(findings=report.findings, impression=report.impression)
        if sees_draft
        else None,
        latest=versions[-1] if versions else None,
        versions=versions,
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
        view = _version(found)
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
    return await _read(session, report, user)


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


async def _radiologist(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await users.get_user(session, user_id)
    if user is None or user.role != Role.RADIOLOGIST:
        raise RadiologistNotFound()
    return user


async def assign_report(
    session: AsyncSession,
    *,
    report_id: uuid.UUID,
    radiologist_id: uuid.UUID,
    actor: Actor,
    admin: User,
) -> ReportRead:
    """An administrator assigns (or reassigns) a report not yet signed to an active
    radiologist."""
    report = await repository.get_report(session, report_id, lock=True)
    if report is None:
        raise ReportNotFound()
    if report.status in SIGNED_STATUSES:
        raise ReportSigned()
    radiologist = await users.get_user(session, radiologist_id)
    if radiologist is None or radiologist.role != Role.RADIOLOGIST or not radiologist.is_active:
        raise NotARadiologist()
    await _assign(session, report, radiologist.id, actor=actor, rule=False)
    return await _read(session, report, admin)


async def _radiologist_views(
    session: AsyncSession, radiologists: Sequence[User]
) -> list[RadiologistRead]:
    ids = [u.id for u in radiologists]
    modalities = await repository.modalities_of(session, ids)
    counts = await repository.open_report_counts(session, ids)
    return [
        RadiologistRead(
            id=u.id,
            username=u.username,
            is_active=u.is_active,
            modalities=modalities[u.id],
            open_reports=counts[u.id],
        )
        for u in radiologists
    ]


async def list_radiologists(session: AsyncSession) -> RadiologistList:
    radiologists = await users.users_with_role(session, Role.RADIOLOGIST)
    return RadiologistList(items=await _radiologist_views(session, radiologists))


async def set_radiologist_modalities(
    session: AsyncSession, *, user_id: uuid.UUID, modalities: Sequence[str], actor: Actor
) -> RadiologistRead:
    """The modalities a radiologist reads (the automatic assignment's rule), replaced."""
    radiologist = await _radiologist(session, user_id)
    await repository.set_modalities(session, radiologist.id, modalities)
    await record_event(
        session,
        actor=actor,
        action="radiologist.modalities",
        object_type="user",
        object_id=radiologist.id,
        details={"modalities": sorted(set(modalities))},
    )
    (view,) = await _radiologist_views(session, [radiologist])
    return view


# --- the PDF ---------------------------------------------------------------------------------


def pdf_key(report: Report) -> str:
    """The object of the report's latest signed version (each version has its own)."""
    return f"reports/{report.id}/v{report.version}.pdf"


async def _pdf_document(session: AsyncSession, report: Report) -> pdf.ReportDocument:
    versions = await repository.versions(session, report.id)
    names: dict[uuid.UUID, str] = {}
    for v in versions:
        if v.signed_by_id not in names:
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


async def report_pdf(
    db: Database, storage: ObjectStorage, *, report_id: uuid.UUID, user: User, actor: Actor
) -> tuple[bytes, str]:
    """The PDF of the report's latest signed version, and its file name: made once per version
    and kept in object storage. Whoever may read the report may download it (audited)."""
    async with db.read_sessionmaker() as session, session.begin():
        report = await get_report(session, report_id=report_id, user=user)
        if report.status not in SIGNED_STATUSES:
            raise ReportNotSigned("A report has a PDF once it is signed.")
        key = pdf_key(report)
        stored = report.pdf_key == key
        document = None if stored else await _pdf_document(session, report)
    if document is None:
        data = await storage.get(key)
    else:
        data = await asyncio.to_thread(pdf.render, document)
        await storage.put(key, data, sha256=hashlib.sha256(data).hexdigest())
        async with db.sessionmaker() as session, session.begin():
            await repository.set_pdf_key(session, report.id, version=report.version, key=key)
    await _record_read(db, actor=actor, report=report, action="report.pdf", version=report.version)
    return data, f"report-{report.id}-v{report.version}.pdf"


# --- the study's timeline --------------------------------------------------------------------

_TIMELINE_ACTIONS = (
    "upload.start",
    "forward.pipelined",
    "upload.complete",
    "forward.delivered",
    "forward.failed",
    "admin.upload_retry",
    "admin.upload_cancel",
    "upload.cancel",
    "report.assign",
    "report.sign",
    "report.amend",
)


def _steps(event: AuditEvent, instances: int, *, forwarded: bool) -> list[TimelineStep]:
    at, details = event.at, event.details or {}

    def step(name: str, detail: str | None = None) -> TimelineStep:
        return TimelineStep(step=name, at=at, detail=detail)

    match event.action:
        case "upload.start":
            return [step("started")]
        case "forward.pipelined":
            return [step("pipelined", "sending verified instances to the PACS while uploading")]
        case "upload.complete":
            accepted = int(details.get("accepted_files", 0))
            refused = int(details.get("rejected_files", 0))
            codes = ", ".join(details.get("codes", []))
            pipelined = int(details.get("pipelined", 0))
            if event.outcome == "rejected":
                why = [codes] if codes else []
                why += _at_pacs(details)
                return [step("received"), step("rejected", "; ".join(why) or None)]
            verdict = f"accepted {accepted} of {accepted + refused} files"
            if refused:
                verdict += f" (refused: {codes})"
            if pipelined:
                verdict += f"; {pipelined} instances queued for the PACS while uploading"
            queued = [step("queued")] if forwarded else []
            return [step("received"), step("validated", verdict), *queued]
        case "forward.delivered":
            confirmed = int(details.get("confirmed", 0))
            return [step("pacs_confirmed", f"PACS confirmed {confirmed}/{instances or confirmed}")]
        case "forward.failed":
            return [step("failed", f"{details.get('failed', 0)} instances refused by the PACS")]
        case "admin.upload_retry":
            return [step("retried")]
        case "admin.upload_cancel" | "upload.cancel":
            return [step("cancelled", "; ".join(_at_pacs(details)) or None)]
        case "report.assign":
            return [step("report_assigned")]
        case "report.sign":
            return [step("report_ready")]
        case "report.amend":
            return [step("report_amended", f"version {details.get('version')}")]
    return []


def _at_pacs(details: dict[str, Any]) -> list[str]:
    """What a cancel or a rejection left at the PACS (pipelined relay): it keeps them."""
    count = int(details.get("already_at_pacs", 0))
    return [f"{count} instances already at the PACS"] if count else []


async def upload_timeline(
    db: Database, *, upload_id: uuid.UUID, user: User, actor: Actor
) -> Timeline:
    """Every step of an upload's journey with its time, from "started" to "report amended"
    (from the audit log, the upload and its report). The uploader's and administrators'."""
    async with db.read_sessionmaker() as session, session.begin():
        upload = await uploads.get_upload(session, upload_id=upload_id, user=user)
        study = await uploads.study_overview(session, upload_id=upload.id)
        report = await repository.report_of_upload(session, upload.id)
        objects = [("upload", str(upload.id))]
        if report is not None:
            objects.append(("report", str(report.id)))
        events = await audit.history(session, objects=objects, actions=_TIMELINE_ACTIONS)
    forwarded = study.target is not None  # a forward job was written: the study was queued
    steps = [s for e in events for s in _steps(e, study.instance_count, forwarded=forwarded)]
    if report is not None:
        steps.append(TimelineStep(step="report_opened", at=report.created_at))
    steps.sort(key=lambda s: s.at)  # stable: a record's steps keep their order
    await record_alone(
        db.sessionmaker,
        actor=actor,
        action="upload.timeline",
        object_type="upload",
        object_id=upload.id,
        study_instance_uid=upload.study_instance_uid,
    )
    return Timeline(
        upload_id=upload.id,
        status=study.status.value,
        steps=steps,
        forwarding_retries=study.attempts,
        last_error=study.last_error,
    )
