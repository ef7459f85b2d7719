"""Reports from the PACS: for every report not ready yet, ask the PACS its study was delivered
to (QIDO-RS) for report instances added there: a Structured Report (Basic Text, Enhanced or
Comprehensive SR: its text, walking the content tree) or an Encapsulated PDF (its PDF kept as
is in object storage as the report's PDF). The report becomes ready with its source recorded
("pacs", the instance's SOP Instance UID); the uploader is told (report ready), it is audited.

A PDF is stored in object storage with no transaction open (a slow store holds no database
lock), under a key of its own per run (reports/objects.py), and recorded in the transaction
that makes the report ready; a run that fails or loses a race between the two (the report
signed meanwhile) deletes it, or leaves it to the sweep of objects no row names.

The study's own instances (those the gateway delivered) and the gateway's own written-back
report are never taken for a report. An unusable instance (an SR without text, a PDF of 0
bytes, not DICOM) is skipped with its reason (logged without patient data, audited, on the
study's timeline) and not looked at again; the report waits for a usable one.

`sync_reports_from_pacs` is the scheduler's job (every RELAYPACS_REPORT_SYNC_MINUTES): it takes
what it needs and runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relaypacs.audit.models import SYSTEM
from relaypacs.audit.service import record_event
from relaypacs.config import PacsTarget, Settings
from relaypacs.db import utcnow
from relaypacs.dicom.documents import (
    ENCAPSULATED_PDF,
    REPORT_CLASSES,
    SR_CLASSES,
    ReportText,
    UnreadableReport,
    pdf_of,
    read_dataset,
    sr_text,
)
from relaypacs.forwarding import service as forwarding
from relaypacs.notifications.service import notify
from relaypacs.pacs.reports import ListedInstance, ReportClient, TooLarge
from relaypacs.reports import repository
from relaypacs.reports.models import (
    SIGNED_STATUSES,
    PacsInstanceOutcome,
    Report,
    ReportStatus,
    ReportVersion,
)
from relaypacs.reports.objects import pacs_pdf_key
from relaypacs.storage import ObjectStorage, StorageError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    report_id: uuid.UUID
    sop_instance_uid: str
    reason: str  # a short code: sr_without_text, empty_pdf, not_a_pdf, not_dicom, too_large...


@dataclass
class SyncResult:
    """What one run did."""

    studies_checked: int = 0
    ready: list[uuid.UUID] = field(default_factory=list)  # reports made ready
    skipped: list[Skipped] = field(default_factory=list)  # unusable instances, with why
    # PACS that did not answer, PDFs the object storage did not take (no PHI)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Found:
    """A usable report instance."""

    instance: ListedInstance
    text: ReportText | None = None
    pdf: bytes | None = None


async def sync_reports_from_pacs(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    storage: ObjectStorage,
    limit: int = 1000,
) -> SyncResult:
    """One run of the report sync over every PACS target (see the module). The uploader's
    notice goes out through `sessionmaker`'s notice hub when each report's transaction
    commits. Never raises for a PACS that fails to answer or an unusable instance."""
    result = SyncResult()
    async with sessionmaker() as session, session.begin():
        reports = await repository.awaiting_reports(session, limit=limit)
        targets = await forwarding.delivered_targets(session, [r.upload_id for r in reports])
    by_target: dict[str, list[Report]] = {}
    for report in reports:
        if report.upload_id in targets and report.study_instance_uid:
            by_target.setdefault(targets[report.upload_id], []).append(report)
    configured = {t.name: t for t in settings.pacs_targets}
    for name, waiting in by_target.items():
        target = configured.get(name)
        if target is None:
            continue
        await _sync_target(sessionmaker, storage, target, waiting, result)
    if result.ready or result.skipped or result.errors:
        logger.info(
            "report sync: %d studies checked, %d reports ready from the PACS, %d instances "
            "skipped, %d errors",
            result.studies_checked,
            len(result.ready),
            len(result.skipped),
            len(result.errors),
        )
    return result


async def _sync_target(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ObjectStorage,
    target: PacsTarget,
    reports: Sequence[Report],
    result: SyncResult,
) -> None:
    client = ReportClient(target, storage)
    try:
        for report in reports:
            try:
                await _sync_report(sessionmaker, storage, client, target, report, result)
            except httpx.HTTPError as exc:
                # The PACS does not answer now: the next run asks again.
                result.errors.append(f"{target.name}: {type(exc).__name__}")
                logger.warning(
                    "report sync: PACS target %r did not answer (%s)",
                    target.name,
                    type(exc).__name__,
                )
                return
            except StorageError as exc:
                # Nothing recorded for this report: the next run reads its instances again.
                result.errors.append(f"storage: {type(exc).__name__}")
                logger.warning(
                    "report sync: report %s: the PACS's PDF was not stored (%s)",
                    report.id,
                    type(exc).__name__,
                )
    finally:
        await client.aclose()


async def _candidates(
    sessionmaker: async_sessionmaker[AsyncSession],
    client: ReportClient,
    target: PacsTarget,
    report: Report,
) -> list[ListedInstance]:
    """The study's report instances in the PACS that are neither the gateway's own (delivered
    with the study, or written back) nor looked at already."""
    listed = await client.study_instances(report.study_instance_uid or "")
    reports = [i for i in listed if i.sop_class_uid in REPORT_CLASSES]
    if not reports:
        return []
    async with sessionmaker() as session, session.begin():
        seen = await repository.pacs_instances_seen(session, report.id)
        seen |= await repository.copy_uids(session, report.id)
        delivered = await forwarding.delivered_contents(
            session, target=target.name, sop_instance_uids=[i.sop_instance_uid for i in reports]
        )
    return [i for i in reports if i.sop_instance_uid not in seen | set(delivered)]


async def _read(client: ReportClient, study_uid: str, instance: ListedInstance) -> _Found:
    """Raises UnreadableReport (why, as a code) or httpx.HTTPError."""
    try:
        data = await client.retrieve_instance(
            study_uid, instance.series_instance_uid, instance.sop_instance_uid
        )
    except TooLarge as exc:
        raise UnreadableReport("too_large") from exc
    if data is None:
        raise UnreadableReport("not_retrievable")
    dataset = await asyncio.to_thread(read_dataset, data)
    sop_class = str(dataset.get("SOPClassUID", instance.sop_class_uid))
    if sop_class == ENCAPSULATED_PDF:
        return _Found(instance, pdf=pdf_of(dataset))
    if sop_class in SR_CLASSES:
        return _Found(instance, text=sr_text(dataset))
    raise UnreadableReport("not_a_report")


async def _sync_report(
    sessionmaker: async_sessionmaker[AsyncSession],
    storage: ObjectStorage,
    client: ReportClient,
    target: PacsTarget,
    report: Report,
    result: SyncResult,
) -> None:
    result.studies_checked += 1
    candidates = await _candidates(sessionmaker, client, target, report)
    found: list[_Found] = []
    skipped: list[Skipped] = []
    for instance in candidates:
        try:
            found.append(await _read(client, report.study_instance_uid or "", instance))
        except UnreadableReport as exc:
            skipped.append(Skipped(report.id, instance.sop_instance_uid, exc.reason))
            logger.warning(
                "report sync: report %s: PACS instance skipped (%s)", report.id, exc.reason
            )
    if not found and not skipped:
        return
    pdf = next((f.pdf for f in found if f.pdf is not None), None)
    key = None
    if pdf is not None and report.status not in SIGNED_STATUSES:
        key = await _keep_pdf(storage, report, pdf)
    try:
        async with sessionmaker() as session, session.begin():
            recorded, ready = await _record(session, report, found, skipped, key, target)
    except Exception:
        if key is not None:
            with contextlib.suppress(Exception):
                await storage.delete(key)
        raise
    if key is not None and not ready:  # signed meanwhile: the PACS's PDF is not the report's
        with contextlib.suppress(Exception):
            await storage.delete(key)
    result.skipped.extend(recorded)
    if ready:
        result.ready.append(report.id)


async def _keep_pdf(storage: ObjectStorage, report: Report, pdf: bytes) -> str:
    """The PACS's PDF stored under a key of its own, for the version the report would become
    (no transaction is open: object storage may be slow)."""
    key = pacs_pdf_key(report.id, report.version + 1)
    try:
        await storage.put(key, pdf, sha256=hashlib.sha256(pdf).hexdigest())
    except Exception:
        with contextlib.suppress(Exception):  # a put that failed may have stored it
            await storage.delete(key)
        raise
    return key


async def _record(
    session: AsyncSession,
    report: Report,
    found: list[_Found],
    skipped: list[Skipped],
    pdf_key: str | None,
    target: PacsTarget,
) -> tuple[list[Skipped], bool]:
    """In one transaction, with the report locked: the skipped instances not recorded yet, and
    the report made ready from those found unless it was signed (or changed) since it was
    read. Returns the skipped instances recorded and whether it was made ready."""
    locked = await repository.get_report(session, report.id, lock=True)
    if locked is None:
        return [], False
    seen = await repository.pacs_instances_seen(session, report.id)
    skipped = [s for s in skipped if s.sop_instance_uid not in seen]
    found = [f for f in found if f.instance.sop_instance_uid not in seen]
    for skip in skipped:
        repository.add_pacs_instance(
            session, report.id, skip.sop_instance_uid, PacsInstanceOutcome.SKIPPED, skip.reason
        )
        await record_event(
            session,
            actor=SYSTEM,
            action="report.pacs_skipped",
            outcome="failure",
            object_type="report",
            object_id=report.id,
            study_instance_uid=locked.study_instance_uid,
            details={"sop_instance_uid": skip.sop_instance_uid, "reason": skip.reason},
        )
    if (
        not found
        or locked.status in SIGNED_STATUSES
        or locked.version != report.version  # the key's version (never, unsigned: kept safe)
        or (pdf_key is None and any(f.pdf is not None for f in found))
    ):
        return skipped, False
    await _make_ready(session, locked, found, target, pdf_key=pdf_key)
    return skipped, True


async def _make_ready(
    session: AsyncSession,
    report: Report,
    found: Sequence[_Found],
    target: PacsTarget,
    *,
    pdf_key: str | None,
) -> None:
    """The report is ready from what the PACS holds: the SRs' text (in the order found), the
    PDF as is (the first one, stored already under `pdf_key`), its source the first instance
    used (an SR before a PDF)."""
    texts = [f.text for f in found if f.text is not None]
    pdfs = [f for f in found if f.pdf is not None]
    source = next((f for f in found if f.text is not None), found[0]).instance
    findings = "\n\n".join(t.findings for t in texts if t.findings)
    impression = "\n\n".join(t.impression for t in texts if t.impression)
    now = utcnow()
    report.version += 1
    await repository.add_version(
        session,
        ReportVersion(
            report_id=report.id,
            version=report.version,
            findings=findings,
            impression=impression,
            signed_by_id=None,
            signed_at=now,
            source="pacs",
            source_instance_uid=source.sop_instance_uid,
        ),
    )
    report.findings, report.impression = findings, impression
    report.status = ReportStatus.READY
    report.ready_at = now
    if pdf_key is not None:
        report.pdf_key = pdf_key
    for f in found:
        repository.add_pacs_instance(
            session, report.id, f.instance.sop_instance_uid, PacsInstanceOutcome.USED, None
        )
    await session.flush()
    if report.uploader_id is not None:
        notify(
            session,
            user_id=report.uploader_id,
            kind="report_ready",
            related_id=report.id,
            payload={
                "version": report.version,
                "upload_id": str(report.upload_id),
                "source": "pacs",
            },
        )
    await record_event(
        session,
        actor=SYSTEM,
        action="report.pacs_received",
        object_type="report",
        object_id=report.id,
        study_instance_uid=report.study_instance_uid,
        details={
            "version": report.version,
            "target": target.name,
            "sop_instance_uid": source.sop_instance_uid,
            "instances": [f.instance.sop_instance_uid for f in found],
            "pdf": bool(pdfs),
        },
    )
    logger.info("report %s ready from PACS target %r", report.id, target.name)
