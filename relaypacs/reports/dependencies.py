"""The report domain's dependencies: the radiologist a route acts as, the worklist's filters."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

from fastapi import Depends, Query

from relaypacs.auth.dependencies import require_roles
from relaypacs.auth.models import Role, User
from relaypacs.fields import Day, Line
from relaypacs.reports import service
from relaypacs.reports.models import Report, ReportStatus
from relaypacs.reports.repository import WorklistFilter
from relaypacs.reports.schemas import Modality
from relaypacs.state import SessionDep

RadiologistUser = Annotated[User, Depends(require_roles(Role.RADIOLOGIST))]


async def writable_report(
    report_id: uuid.UUID, user: RadiologistUser, session: SessionDep
) -> Report:
    """The report of the path, locked in the request's transaction, if it is assigned to this
    radiologist; otherwise 404. A dependency: another radiologist's report is a 404 before the
    body is looked at."""
    return await service.get_writable_report(session, report_id=report_id, user=user)


WritableReport = Annotated[Report, Depends(writable_report)]


async def worklist_filter(
    status: Annotated[ReportStatus | None, Query()] = None,
    modality: Annotated[Modality | None, Query()] = None,
    date_from: Annotated[
        Day | None, Query(description="Reports opened on or after this day (UTC).")
    ] = None,
    date_to: Annotated[
        Day | None, Query(description="Reports opened on or before this day (UTC).")
    ] = None,
    q: Annotated[
        Line | None,
        Query(
            min_length=1,
            max_length=64,
            description="Text in the patient's name or id, the accession number, the study "
            "description or its StudyInstanceUID.",
        ),
    ] = None,
) -> WorklistFilter:
    def midnight(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC)

    return WorklistFilter(
        status=status,
        modality=modality,
        created_from=midnight(date_from) if date_from else None,
        created_before=midnight(date_to + dt.timedelta(days=1)) if date_to else None,
        text=q.strip().lower() if q and q.strip() else None,
    )


WorklistFilterDep = Annotated[WorklistFilter, Depends(worklist_filter)]
