"""Every query of the report domain's tables (report, report_version, radiologist_modality,
assignment_rule, report_pacs_copy, report_pacs_instance)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, ScalarResult, Select, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.reports.models import (
    SIGNED_STATUSES,
    AssignmentRule,
    CopyStatus,
    RadiologistModality,
    Report,
    ReportPacsCopy,
    ReportPacsInstance,
    ReportStatus,
    ReportVersion,
)


async def add_report(session: AsyncSession, report: Report) -> Report:
    session.add(report)
    await session.flush()
    return report


async def get_report(
    session: AsyncSession, report_id: uuid.UUID, *, lock: bool = False
) -> Report | None:
    return await session.get(Report, report_id, with_for_update=lock, populate_existing=lock)


async def report_of_upload(session: AsyncSession, upload_id: uuid.UUID) -> Report | None:
    return await session.scalar(select(Report).where(Report.upload_id == upload_id))


async def set_pdf_key(
    session: AsyncSession, report_id: uuid.UUID, *, version: int, key: str
) -> None:
    """The PDF of `version` is stored (unless a later version was signed meanwhile)."""
    await session.execute(
        update(Report).where(Report.id == report_id, Report.version == version).values(pdf_key=key)
    )


async def add_version(session: AsyncSession, version: ReportVersion) -> None:
    session.add(version)
    await session.flush()


async def versions(session: AsyncSession, report_id: uuid.UUID) -> list[ReportVersion]:
    """Every signed version, oldest first."""
    return list(
        await session.scalars(
            select(ReportVersion)
            .where(ReportVersion.report_id == report_id)
            .order_by(ReportVersion.version)
        )
    )


async def get_version(
    session: AsyncSession, report_id: uuid.UUID, version: int
) -> ReportVersion | None:
    return await session.scalar(
        select(ReportVersion).where(
            ReportVersion.report_id == report_id, ReportVersion.version == version
        )
    )


@dataclass(frozen=True)
class WorklistFilter:
    radiologist_id: uuid.UUID | None = None  # assigned to this radiologist
    uploader_id: uuid.UUID | None = None  # of this uploader's studies
    status: ReportStatus | None = None
    modality: str | None = None
    created_from: dt.datetime | None = None
    created_before: dt.datetime | None = None
    text: str | None = None  # lower case


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _filtered(query: Select[Any], f: WorklistFilter) -> Select[Any]:
    if f.radiologist_id is not None:
        query = query.where(Report.radiologist_id == f.radiologist_id)
    if f.uploader_id is not None:
        query = query.where(Report.uploader_id == f.uploader_id)
    if f.status is not None:
        query = query.where(Report.status == f.status)
    if f.modality is not None:
        query = query.where(Report.modality == f.modality)
    if f.created_from is not None:
        query = query.where(Report.created_at >= f.created_from)
    if f.created_before is not None:
        query = query.where(Report.created_at < f.created_before)
    if f.text:
        query = query.where(Report.search_text.like(_like_pattern(f.text), escape="\\"))
    return query


async def worklist(
    session: AsyncSession, f: WorklistFilter, *, limit: int, offset: int
) -> tuple[list[Report], int]:
    """A page of the matching reports, oldest first, and how many match."""
    rows: ScalarResult[Report] = await session.scalars(
        _filtered(select(Report), f)
        .order_by(Report.created_at, Report.id)
        .limit(limit)
        .offset(offset)
    )
    total = await session.scalar(_filtered(select(func.count()).select_from(Report), f))
    return list(rows), int(total or 0)


# --- radiologists ---------------------------------------------------------------------------


async def modalities_of(
    session: AsyncSession, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[str]]:
    rows = await session.execute(
        select(RadiologistModality.user_id, RadiologistModality.modality)
        .where(RadiologistModality.user_id.in_(user_ids))
        .order_by(RadiologistModality.modality)
    )
    found: dict[uuid.UUID, list[str]] = {u: [] for u in user_ids}
    for user_id, modality in rows:
        found[user_id].append(modality)
    return found


async def set_modalities(
    session: AsyncSession, user_id: uuid.UUID, modalities: Sequence[str]
) -> None:
    await session.execute(delete(RadiologistModality).where(RadiologistModality.user_id == user_id))
    if modalities:
        await session.execute(
            insert(RadiologistModality),
            [{"user_id": user_id, "modality": m} for m in sorted(set(modalities))],
        )


async def readers_of(session: AsyncSession, modality: str) -> list[uuid.UUID]:
    """The radiologists registered for a modality."""
    return list(
        await session.scalars(
            select(RadiologistModality.user_id).where(RadiologistModality.modality == modality)
        )
    )


async def open_report_counts(
    session: AsyncSession, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """How many reports assigned to each radiologist are not signed yet."""
    rows = await session.execute(
        select(Report.radiologist_id, func.count())
        .where(Report.radiologist_id.in_(user_ids), Report.status.not_in(SIGNED_STATUSES))
        .group_by(Report.radiologist_id)
    )
    counts = dict.fromkeys(user_ids, 0)
    for user_id, n in rows:
        if user_id is not None:
            counts[user_id] = int(n)
    return counts


async def last_assigned(
    session: AsyncSession, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, dt.datetime | None]:
    """When each radiologist was last assigned a report (None: never)."""
    rows = await session.execute(
        select(Report.radiologist_id, func.max(Report.assigned_at))
        .where(Report.radiologist_id.in_(user_ids))
        .group_by(Report.radiologist_id)
    )
    last: dict[uuid.UUID, dt.datetime | None] = dict.fromkeys(user_ids)
    for user_id, at in rows:
        if user_id is not None:
            last[user_id] = at
    return last


# --- the automatic assignment rule ----------------------------------------------------------


async def assignment_rule(session: AsyncSession, *, lock: bool = False) -> AssignmentRule | None:
    """The rule an administrator set (None: never set)."""
    return await session.get(AssignmentRule, 1, with_for_update=lock, populate_existing=lock)


async def save_assignment_rule(
    session: AsyncSession, *, enabled: bool, by_modality: bool, by: uuid.UUID | None
) -> AssignmentRule:
    rule = await assignment_rule(session, lock=True)
    if rule is None:
        rule = AssignmentRule(id=1)
        session.add(rule)
    rule.enabled = enabled
    rule.by_modality = by_modality
    rule.updated_at = dt.datetime.now(dt.UTC)
    rule.updated_by = by
    await session.flush()
    return rule


# --- reports from the PACS, and back to it ---------------------------------------------------


async def awaiting_reports(session: AsyncSession, *, limit: int = 1000) -> list[Report]:
    """Reports not signed yet (pending or assigned), oldest first: the sync looks for them."""
    return list(
        await session.scalars(
            select(Report)
            .where(Report.status.not_in(SIGNED_STATUSES))
            .order_by(Report.created_at, Report.id)
            .limit(limit)
        )
    )


async def pacs_instances_seen(session: AsyncSession, report_id: uuid.UUID) -> set[str]:
    """The SOP Instance UIDs of report instances already looked at for this report."""
    return set(
        await session.scalars(
            select(ReportPacsInstance.sop_instance_uid).where(
                ReportPacsInstance.report_id == report_id
            )
        )
    )


def add_pacs_instance(
    session: AsyncSession,
    report_id: uuid.UUID,
    sop_instance_uid: str,
    outcome: str,
    reason: str | None,
) -> None:
    session.add(
        ReportPacsInstance(
            report_id=report_id, sop_instance_uid=sop_instance_uid, outcome=outcome, reason=reason
        )
    )


async def copies(
    session: AsyncSession, report_id: uuid.UUID, statuses: Sequence[str] | None = None
) -> list[ReportPacsCopy]:
    """The report's written-back versions, oldest first (of these statuses)."""
    query = select(ReportPacsCopy).where(ReportPacsCopy.report_id == report_id)
    if statuses is not None:
        query = query.where(ReportPacsCopy.status.in_(statuses))
    return list(await session.scalars(query.order_by(ReportPacsCopy.version)))


async def copy_uids(session: AsyncSession, report_id: uuid.UUID) -> set[str]:
    return set(
        await session.scalars(
            select(ReportPacsCopy.sop_instance_uid).where(ReportPacsCopy.report_id == report_id)
        )
    )


def add_copy(session: AsyncSession, copy: ReportPacsCopy) -> None:
    session.add(copy)


def record_copy_answers(
    connection: Connection,
    upload_id: uuid.UUID,
    answers: Sequence[tuple[int, str, str | None, str | None]],
) -> None:
    """(version, status, reason, md5) of a STOW-RS answer, for the report of the upload."""
    report_id = select(Report.id).where(Report.upload_id == upload_id).scalar_subquery()
    for version, status, reason, md5 in answers:
        values: dict[str, Any] = {"status": status, "reason": reason}
        if md5 is not None:
            values["md5"] = md5
        connection.execute(
            update(ReportPacsCopy)
            .where(ReportPacsCopy.report_id == report_id, ReportPacsCopy.version == version)
            .values(**values)
        )


async def releasable_copies(
    session: AsyncSession, purged_uploads: Select[uuid.UUID], *, limit: int
) -> list[tuple[ReportPacsCopy, Report]]:
    """Versions the PACS holds (confirmed) whose gateway copies are still kept, of reports on
    uploads among `purged_uploads`."""
    rows = await session.execute(
        select(ReportPacsCopy, Report)
        .join(Report, Report.id == ReportPacsCopy.report_id)
        .where(
            ReportPacsCopy.status == CopyStatus.CONFIRMED,
            ReportPacsCopy.released_at.is_(None),
            Report.upload_id.in_(purged_uploads),
        )
        .order_by(ReportPacsCopy.created_at)
        .limit(limit)
    )
    return [(copy, report) for copy, report in rows.all()]


async def mark_released(
    session: AsyncSession, report_id: uuid.UUID, version: int, *, at: dt.datetime, pdf: str
) -> bool:
    """The version's gateway copies are deleted; the report's PDF is made again when asked for
    if `pdf` was its stored one. False if another run marked it first."""
    result = await session.execute(
        update(ReportPacsCopy)
        .where(
            ReportPacsCopy.report_id == report_id,
            ReportPacsCopy.version == version,
            ReportPacsCopy.released_at.is_(None),
        )
        .values(released_at=at)
        .execution_options(synchronize_session=False)
    )
    if not getattr(result, "rowcount", 0):
        return False
    await session.execute(
        update(Report)
        .where(Report.id == report_id, Report.pdf_key == pdf)
        .values(pdf_key=None)
        .execution_options(synchronize_session=False)
    )
    return True


@dataclass
class StoredObjects:
    """What the rows of one report name in object storage (reports/objects.py's sweep)."""

    version: int = 0  # the latest signed version
    pdf_key: str | None = None
    copy_keys: set[str] = field(default_factory=set)
    versions: dict[int, str] = field(default_factory=dict)  # version -> its source


async def stored_objects(
    session: AsyncSession, report_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, StoredObjects]:
    """For each of these reports that still exists, what its rows name."""
    found: dict[uuid.UUID, StoredObjects] = {}
    if not report_ids:
        return found
    ids = list(report_ids)
    rows = await session.execute(
        select(Report.id, Report.version, Report.pdf_key).where(Report.id.in_(ids))
    )
    for report_id, version, pdf_key in rows:
        found[report_id] = StoredObjects(version=version, pdf_key=pdf_key)
    versions = await session.execute(
        select(ReportVersion.report_id, ReportVersion.version, ReportVersion.source).where(
            ReportVersion.report_id.in_(ids)
        )
    )
    for report_id, version, source in versions:
        if report_id in found:
            found[report_id].versions[version] = source
    keys = await session.execute(
        select(ReportPacsCopy.report_id, ReportPacsCopy.storage_key).where(
            ReportPacsCopy.report_id.in_(ids)
        )
    )
    for report_id, key in keys:
        if report_id in found:
            found[report_id].copy_keys.add(key)
    return found
