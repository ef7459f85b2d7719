"""Who reads a report: the assignment itself (by an administrator, or by the rule of
`assignment_rule.py` when a report opens); the radiologists' list and the modalities each one
reads."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from relaypacs.audit.models import Actor
from relaypacs.audit.service import record_event
from relaypacs.auth import repository as users
from relaypacs.auth.models import Role, User
from relaypacs.db import utcnow
from relaypacs.notifications.service import notify
from relaypacs.reports import repository
from relaypacs.reports.errors import (
    NotARadiologist,
    RadiologistNotFound,
    ReportNotFound,
    ReportSigned,
)
from relaypacs.reports.models import SIGNED_STATUSES, Report, ReportStatus
from relaypacs.reports.schemas import RadiologistList, RadiologistRead


async def assign(
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
) -> Report:
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
    await assign(session, report, radiologist.id, actor=actor, rule=False)
    return report


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
