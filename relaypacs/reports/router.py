"""HTTP endpoints of the report domain: the worklist, a report and its signed versions, its
study, drafting, signing and amending; and, for administrators, assignment and the
radiologists' modalities and the automatic assignment rule."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from relaypacs.auth.dependencies import ActorDep, AdminUser, CurrentUser
from relaypacs.fields import Offset
from relaypacs.reports import assignment, assignment_rule, service, timeline
from relaypacs.reports.dependencies import RadiologistUser, WorklistFilterDep, WritableReport
from relaypacs.reports.schemas import (
    AssignmentRuleRead,
    AssignmentRuleSet,
    DraftSave,
    ModalitiesSet,
    RadiologistList,
    RadiologistRead,
    ReportAmend,
    ReportAssign,
    ReportList,
    ReportRead,
    ReportSign,
    ReportVersionRead,
    StudyView,
    Timeline,
)
from relaypacs.state import AppStateDep, DatabaseDep, ReadSessionDep, SessionDep

router = APIRouter(prefix="/reports", tags=["reports"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])
# The upload's journey reaches its report: this domain (above uploads) tells it whole.
timeline_router = APIRouter(prefix="/uploads", tags=["uploads"])


@router.get("", response_model=ReportList)
async def list_reports(
    user: CurrentUser,
    actor: ActorDep,
    db: DatabaseDep,
    filters: WorklistFilterDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[Offset, Query()] = 0,
) -> ReportList:
    """Oldest first. A radiologist's: assigned to them; a clinician's: of their own uploads; an
    administrator's: all."""
    items, total = await service.list_reports(
        db, user=user, actor=actor, filters=filters, limit=limit, offset=offset
    )
    return ReportList(items=items, total=total)


@router.get("/{report_id}", response_model=ReportRead)
async def read_report(
    report_id: uuid.UUID, user: CurrentUser, actor: ActorDep, db: DatabaseDep
) -> ReportRead:
    return await service.show_report(db, report_id=report_id, user=user, actor=actor)


@router.get("/{report_id}/versions/{version}", response_model=ReportVersionRead)
async def read_report_version(
    report_id: uuid.UUID,
    version: Annotated[int, Path(ge=1, le=1_000_000)],
    user: CurrentUser,
    actor: ActorDep,
    db: DatabaseDep,
) -> ReportVersionRead:
    return await service.show_version(
        db, report_id=report_id, version=version, user=user, actor=actor
    )


@router.get("/{report_id}/study", response_model=StudyView)
async def read_report_study(
    report_id: uuid.UUID, user: CurrentUser, actor: ActorDep, state: AppStateDep
) -> StudyView:
    return await service.show_study(
        state.db,
        report_id=report_id,
        user=user,
        actor=actor,
        viewer_template=state.settings.pacs_viewer_url,
    )


@router.get(
    "/{report_id}/pdf",
    response_class=Response,
    responses={200: {"content": {"application/pdf": {}}, "description": "The PDF."}},
)
async def download_report_pdf(
    report_id: uuid.UUID, user: CurrentUser, actor: ActorDep, state: AppStateDep
) -> Response:
    """The latest signed version as a PDF (409 report_not_signed before the first signature)."""
    data, name = await service.report_pdf(
        state.db, state.storage, report_id=report_id, user=user, actor=actor
    )
    return Response(
        data,
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.put("/{report_id}/draft", response_model=ReportRead)
async def save_draft(
    report: WritableReport,
    body: DraftSave,
    user: RadiologistUser,
    actor: ActorDep,
    session: SessionDep,
) -> ReportRead:
    return await service.save_draft(session, report=report, user=user, actor=actor, body=body)


@router.post("/{report_id}/sign", response_model=ReportRead)
async def sign_report(
    report: WritableReport,
    user: RadiologistUser,
    actor: ActorDep,
    session: SessionDep,
    body: ReportSign | None = None,
) -> ReportRead:
    return await service.sign_report(
        session, report=report, user=user, actor=actor, body=body or ReportSign()
    )


@router.post("/{report_id}/amend", response_model=ReportRead)
async def amend_report(
    report: WritableReport,
    body: ReportAmend,
    user: RadiologistUser,
    actor: ActorDep,
    session: SessionDep,
) -> ReportRead:
    return await service.amend_report(session, report=report, user=user, actor=actor, body=body)


@admin_router.post("/reports/{report_id}/assign", response_model=ReportRead)
async def assign_report(
    report_id: uuid.UUID,
    body: ReportAssign,
    admin: AdminUser,
    actor: ActorDep,
    session: SessionDep,
) -> ReportRead:
    return await service.assign_report(
        session,
        report_id=report_id,
        radiologist_id=body.radiologist_id,
        actor=actor,
        admin=admin,
    )


@admin_router.get("/radiologists", response_model=RadiologistList)
async def list_radiologists(_admin: AdminUser, session: ReadSessionDep) -> RadiologistList:
    return await assignment.list_radiologists(session)


@admin_router.put("/radiologists/{user_id}/modalities", response_model=RadiologistRead)
async def set_radiologist_modalities(
    user_id: uuid.UUID,
    body: ModalitiesSet,
    _admin: AdminUser,
    actor: ActorDep,
    session: SessionDep,
) -> RadiologistRead:
    return await assignment.set_radiologist_modalities(
        session, user_id=user_id, modalities=body.modalities, actor=actor
    )


@timeline_router.get("/{upload_id}/timeline", response_model=Timeline)
async def upload_timeline(
    upload_id: uuid.UUID, user: CurrentUser, actor: ActorDep, db: DatabaseDep
) -> Timeline:
    """Every step of the upload's journey with its time, oldest first: started, received,
    validated (or rejected, with why), queued, PACS confirmed N/N (or failed), report opened,
    assigned, ready, amended."""
    return await timeline.upload_timeline(db, upload_id=upload_id, user=user, actor=actor)


@admin_router.get("/assignment-rule", response_model=AssignmentRuleRead)
async def read_assignment_rule(
    _admin: AdminUser, state: AppStateDep, session: ReadSessionDep
) -> AssignmentRuleRead:
    """The automatic assignment rule in force (the administrator's, else the configuration's)."""
    return await assignment_rule.show_rule(session, configured=state.settings.report_auto_assign)


@admin_router.put("/assignment-rule", response_model=AssignmentRuleRead)
async def set_assignment_rule(
    body: AssignmentRuleSet,
    _admin: AdminUser,
    actor: ActorDep,
    state: AppStateDep,
    session: SessionDep,
) -> AssignmentRuleRead:
    """Turn the rule on or off and choose among whom the round robin turns; applies to the
    reports that open from now on. Audited (`assignment.rule`)."""
    return await assignment_rule.set_rule(
        session,
        enabled=body.enabled,
        by_modality=body.by_modality,
        actor=actor,
        configured=state.settings.report_auto_assign,
    )
